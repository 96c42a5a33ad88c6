"""What a trained model's MLflow run carries besides its metrics and model: the error-vs-horizon
plot of its evaluation and its configuration as a readable file (the loss curves are logged with
the run, ``trajfm.registry.tracking.LOSS_CURVE_ARTIFACT``).

Artifacts: ``plots/error_vs_horizon.png`` (mean great-circle error per step ahead, model vs
constant velocity, metres) and ``config.json`` (preset, model, training, features and
evaluation settings, indented).
"""

from __future__ import annotations

ERROR_VS_HORIZON_ARTIFACT = "plots/error_vs_horizon.png"
CONFIG_ARTIFACT = "config.json"


def error_vs_horizon_figure(
    model_m: list[float], baseline_m: list[float], n_windows: int | None = None, preset: str = "model"
):
    """Mean error (metres) per step ahead of the model and constant velocity (no pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    steps = list(range(1, len(model_m) + 1))
    ax.plot(steps, model_m, "r.-", label=f"model ({preset})")
    if baseline_m:
        ax.plot(steps, baseline_m, "b.-", label="constant velocity")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("mean error (m, great circle)")
    ax.set_title("error vs horizon" + (f" ({n_windows:,} windows)" if n_windows else ""))
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def log_training_artifacts(tracking_uri: str, run_id: str, config: dict, metrics: dict) -> list[str]:
    """Add the config and (when ``metrics`` has per-step errors) the error-vs-horizon plot to an
    existing run; returns the artifact paths written."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    client.log_dict(run_id, config, CONFIG_ARTIFACT)
    written = [CONFIG_ARTIFACT]
    model_m = metrics.get("error_by_step_m")
    if model_m:
        fig = error_vs_horizon_figure(
            model_m,
            metrics.get("cv_error_by_step_m") or [],
            metrics.get("n_windows"),
            str(metrics.get("preset", "model")),
        )
        client.log_figure(run_id, fig, ERROR_VS_HORIZON_ARTIFACT)
        written.append(ERROR_VS_HORIZON_ARTIFACT)
    return written
