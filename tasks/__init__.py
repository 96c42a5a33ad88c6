"""Prefect tasks: one thin wrapper per library step (retries, caching, artifacts, logging)."""
