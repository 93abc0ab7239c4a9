"""Prefect Blocks: the typed config store for venues, NATS and storage (see issue "Prefect orchestration")."""
