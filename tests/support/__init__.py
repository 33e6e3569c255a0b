"""Factories and process helpers shared by the tests (no test imports from conftest.py)."""
