"""Data layer: canonical schema, readers, ingest, cleaning and preprocessing."""
