"""Deployment definitions shared by ``prefect.serve()`` and ``prefect.yaml``."""
