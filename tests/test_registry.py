"""MLflow tracking, registration and champion promotion, with a tiny untrained TrajGPT.

Three registrations into a fresh SQLite store under tmp: the first becomes champion, a better
second takes the alias, a worse third does not. The champion loads as a pyfunc from
``models:/trajfm@champion`` and forecasts points in range, from datetimes or ISO strings.
"""

from __future__ import annotations

import os

for _key, _value in {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_key, _value)

# The imports below come after the switches above: the libraries read them when first imported.
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

mlflow = pytest.importorskip("mlflow")

from trajfm.model import TrajGPT, load_preset, save_checkpoint  # noqa: E402
from trajfm.registry import champion_info, log_and_register, setup_mlflow, tracking_uri  # noqa: E402
from trajfm.registry.pyfunc import example_points  # noqa: E402

HISTORY = [{"epoch": e, "train_loss": 1.0 / (e + 1), "val_loss": 1.3 / (e + 1)} for e in range(3)]
ADES = [520.0, 410.0, 480.0]  # second improves, third is worse than the second


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A data root with three registered versions; MLflow's global state restored afterwards."""
    root = tmp_path_factory.mktemp("registry_root")
    cwd = tmp_path_factory.mktemp("cwd")  # ./mlruns must not appear here
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(key, raising=False)
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mpl")))
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.chdir(cwd)
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        config = load_preset("tutorial", n_layer=1, n_head=2, d_model=32, block_size=16, dropout=0.0)
        checkpoint = save_checkpoint(root / "tiny.pt", TrajGPT(config), extra={"note": "untrained"})
        results = [
            log_and_register(
                root,
                run_name=f"tiny-{i}",
                params={"preset": "tutorial", "model": config.to_dict(), "lr": 3e-4},
                metrics={"test_ade_m": ade, "test_fde_m": 2 * ade},
                history=HISTORY,
                checkpoint_path=checkpoint,
                tags={"attempt": i},
            )
            for i, ade in enumerate(ADES)
        ]
        yield {"root": root, "cwd": cwd, "results": results, "config": config}
        mlflow.set_tracking_uri(None)  # also unsets the env var; the context restores it
        mlflow.set_registry_uri(None)


def test_champion_moves_only_on_improvement(registry):
    first, second, third = registry["results"]
    assert [r.version for r in registry["results"]] == [1, 2, 3]
    assert first.promoted and first.champion_version == 1 and first.previous_champion_metric is None
    assert second.promoted and second.champion_version == 2 and second.previous_champion_metric == ADES[0]
    assert not third.promoted and third.champion_version == 2 and third.previous_champion_metric == ADES[1]
    assert third.metric_value == ADES[2] and third.model_uri == "models:/trajfm/3"

    info = champion_info(registry["root"])
    assert info["version"] == 2 and info["run_id"] == second.run_id
    assert float(info["tags"]["test_ade_m"]) == ADES[1]
    assert info["metrics"]["test_ade_m"] == ADES[1]
    assert champion_info(registry["root"], name="no-such-model") is None


def test_run_logs_params_history_and_plot(registry):
    client = mlflow.MlflowClient(tracking_uri(registry["root"]))
    run = client.get_run(registry["results"][0].run_id)
    assert run.data.params["model.d_model"] == "32" and run.data.params["lr"] == "0.0003"
    assert run.data.tags["attempt"] == "0"
    val = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in sorted(val, key=lambda m: m.step)] == [0, 1, 2]
    assert "plots/loss_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    version = client.get_model_version("trajfm", "3")
    assert version.tags["trajfm.promoted"] == "false"
    # Everything lives under the data root, nothing in the working directory.
    assert (registry["root"] / "mlflow.db").is_file()
    assert (registry["root"] / "mlartifacts").is_dir()
    assert not (registry["cwd"] / "mlruns").exists()


def test_champion_pyfunc_forecasts_points(registry):
    mlflow.set_tracking_uri(tracking_uri(registry["root"]))
    model = mlflow.pyfunc.load_model("models:/trajfm@champion")
    points = example_points(n_traj=3, n_points=6)  # t as ISO strings, as JSON serving sends
    horizon = 4
    out = model.predict(points, params={"horizon": horizon})
    assert list(out.columns)[:5] == ["traj_id", "step", "t", "lon", "lat"]
    assert list(out.columns)[5:] == [f"radius_m_q{q}" for q in ("10", "25", "50", "75", "90")]
    assert len(out) == 3 * horizon and sorted(out["step"].unique()) == list(range(1, horizon + 1))
    assert np.isfinite(out[["lon", "lat"]].to_numpy()).all()
    assert out["lon"].between(-180, 180).all() and out["lat"].between(-90, 90).all()
    last_t = pd.to_datetime(points["t"], utc=True).groupby(points["traj_id"]).max()
    assert (out["t"].to_numpy() >= last_t.loc[out["traj_id"]].to_numpy()).all()

    # extra canonical columns are accepted too; horizon defaults to 10. ``t`` is text (the CSV-safe
    # declaration): datetimes are refused by MLflow's schema check with the column named.
    canonical = points.assign(obj_id="m", kind="vessel")
    assert len(model.predict(canonical)) == 3 * 10
    with pytest.raises(Exception, match="column t"):
        model.predict(points.assign(t=pd.to_datetime(points["t"], utc=True)))


def test_the_logged_model_is_code_and_weights_never_a_pickle(registry, tmp_path):
    """Models from code: the model holds pyfunc_code.py and the checkpoint, no pickled object."""
    mlflow.set_tracking_uri(tracking_uri(registry["root"]))
    local = Path(mlflow.artifacts.download_artifacts("models:/trajfm@champion", dst_path=str(tmp_path)))
    files = sorted(p.name for p in local.rglob("*") if p.is_file())
    assert "pyfunc_code.py" in files and any(f.endswith(".pt") for f in files), files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files


def test_champion_info_on_empty_root_creates_nothing(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert champion_info(tmp_path) is None
    assert not (tmp_path / "mlflow.db").exists()


def test_tracking_uri_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_uri(tmp_path) == "http://127.0.0.1:5999"


def test_setup_mlflow_leaves_environment_alone(registry, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    setup_mlflow(registry["root"])
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert mlflow.get_tracking_uri() == tracking_uri(registry["root"])


def test_promotion_requires_the_metric(registry, tmp_path):
    with pytest.raises(ValueError, match="test_ade_m"):
        log_and_register(tmp_path, "no-metric", {}, {"test_fde_m": 1.0}, [], registry["root"] / "tiny.pt")
