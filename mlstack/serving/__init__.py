"""Serving: the scoring core, the worker runtime, bento packaging."""
