"""Prefect flows of mlstack: each task is one call into the mlstack package."""
