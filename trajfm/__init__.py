"""trajfm: a foundation model for mobility trajectories, built from GPT-2.

The library is plain Python (no Prefect import anywhere below this package): data readers and
preprocessing, Great Expectations quality gates, feature windows, the GPT-2 model, training,
evaluation and MLflow registration. ``tasks/`` and ``flows/`` wrap it for Prefect.
"""

__version__ = "0.1.0"


def load(uri, data_root=None, device: str = "cpu"):
    """A forecaster for ``models:/NAME@ALIAS`` (MLflow) or a checkpoint / train directory (no
    MLflow import): ``trajfm.load(uri).forecast(points_df, horizon=10)``; see ``trajfm.forecaster``."""
    from trajfm.forecaster import load as _load

    return _load(uri, data_root=data_root, device=device)
