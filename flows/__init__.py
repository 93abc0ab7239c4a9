"""Prefect flows: thin wrappers that wire engine pieces together (no exchange logic here)."""
