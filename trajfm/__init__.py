"""trajfm: a foundation model for mobility trajectories, built from GPT-2.

The library is plain Python (no Prefect import anywhere below this package): data readers and
preprocessing, Great Expectations quality gates, feature windows, the GPT-2 model, training,
evaluation and MLflow registration. ``tasks/`` and ``flows/`` wrap it for Prefect.
"""

__version__ = "0.1.0"
