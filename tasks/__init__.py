"""Prefect tasks (thin wrappers over engine calls); the periodic REST pulls land here."""
