"""Prefect flows: compose tasks, choose runners; no data logic of their own."""
