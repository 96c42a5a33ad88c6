"""What a registered version carries (issue 20.6, 20.7): a model card as its description, the
training/evaluation windows as run inputs, evaluation settings as params (not metrics), a flag
when it is worse than constant velocity, a link to the Prefect run; and a served model that is
self-contained (its own ``code/trajfm``, no ``trajfm`` pip requirement), loads in a fresh
process without the repository, takes CSV and refuses off-cadence points clearly.
Real data: the embedded NY Harbor AIS slice."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from test_evaluate_cli import train_tiny


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    import mlflow

    from trajfm.evaluate.run import run_evaluation
    from trajfm.registry.register import register_training
    from trajfm.registry.tracking import tracking_uri
    from trajfm.store import read_manifest

    root = tmp_path_factory.mktemp("card_root")
    train_dir = train_tiny(root, steps=6)
    features_dir = read_manifest(train_dir)["features_dir"]
    metrics = run_evaluation(features_dir, train_dir, root=root, context_len=12, horizon=6)
    handler = _Capture()
    logging.getLogger("trajfm.registry.register").addHandler(handler)
    try:
        reg = register_training(
            train_dir,
            features_dir,
            metrics,
            root=root,
            extra_tags={
                "prefect.flow_run_id": "abc-123",
                "prefect.flow_run_url": "http://127.0.0.1:4200/runs/flow-run/abc-123",
            },
        )
    finally:
        logging.getLogger("trajfm.registry.register").removeHandler(handler)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(root), registry_uri=tracking_uri(root))
    return root, train_dir, metrics, reg, client, handler.messages


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_version_has_a_model_card_and_the_run_its_datasets(registered):
    _, _, metrics, reg, client, _ = registered
    mv = client.get_model_version(reg.name, str(reg.version))
    card = mv.description
    for needed in (
        "## Input contract",
        "WGS84 degrees",
        "radius_m_q10",
        "## Data it saw",
        "constant velocity",
        f"{metrics['ade_m']:,.1f}",
        f"{metrics['cv_ade_m']:,.1f}",
        "~60 s",
    ):
        assert needed in card, needed
    run = client.get_run(reg.run_id)
    assert run.data.tags["mlflow.note.content"] == card
    inputs = {d.tags[0].value if d.tags else None: d.dataset for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "evaluation"}
    assert inputs["training"].name.endswith("-train") and inputs["evaluation"].name.endswith("-test")
    assert "features/" in inputs["training"].source and not inputs["training"].source.startswith("/")


def test_eval_settings_are_params_not_metrics(registered):
    _, _, _, reg, client, _ = registered
    run = client.get_run(reg.run_id)
    assert "test_context_len" not in run.data.metrics and "test_horizon" not in run.data.metrics
    assert run.data.params["eval.context_len"] == "12" and run.data.params["eval.horizon"] == "6"
    assert run.data.metrics["test_ade_m"] > 0


def test_worse_than_constant_velocity_is_flagged_and_the_prefect_run_linked(registered):
    _, _, metrics, reg, client, warnings = registered
    mv = client.get_model_version(reg.name, str(reg.version))
    worse = metrics["ade_m"] > metrics["cv_ade_m"]
    assert mv.tags["trajfm.worse_than_constant_velocity"] == str(worse).lower()
    assert any("worse than constant velocity" in m for m in warnings) == worse == reg.worse_than_constant_velocity
    assert ("do not serve it" in mv.description) == worse
    assert mv.tags["prefect.flow_run_id"] == "abc-123" and mv.tags["prefect.flow_run_url"].endswith("abc-123")
    assert client.get_run(reg.run_id).data.tags["prefect.flow_run_id"] == "abc-123"


def test_worse_than_constant_velocity_rule():
    from trajfm.registry.register import worse_than_constant_velocity

    assert worse_than_constant_velocity({"ade_m": 120.0, "cv_ade_m": 100.0})
    assert not worse_than_constant_velocity({"ade_m": 80.0, "cv_ade_m": 100.0})
    assert not worse_than_constant_velocity({"ade_m": 80.0})


@pytest.fixture(scope="module")
def model_copy(registered, tmp_path_factory):
    """The registered model downloaded to a plain folder (what `mlflow models serve` gets)."""
    import mlflow

    from trajfm.registry.tracking import global_uris, tracking_uri

    root, _, _, reg, _, _ = registered
    dest = tmp_path_factory.mktemp("served")
    with global_uris(tracking_uri(root)):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{reg.name}/{reg.version}", dst_path=str(dest)
        )
    return Path(local)


def test_served_model_is_self_contained(model_copy):
    import yaml

    reqs = (model_copy / "requirements.txt").read_text()
    assert "trajfm" not in reqs and "torch==" in reqs and "mlflow==" in reqs
    flavor = yaml.safe_load((model_copy / "MLmodel").read_text())["flavors"]["python_function"]
    assert (model_copy / flavor["code"] / "trajfm" / "forecaster.py").is_file()


FRESH = r"""
import sys
# No repository: drop the editable install's finder and any path into the checkout.
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
# (the venv may live in the checkout)
sys.path[:] = [p for p in sys.path if p and (not p.startswith(REPO) or p.startswith(sys.prefix))]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(MODEL)
import trajfm
assert trajfm.__file__.startswith(MODEL), trajfm.__file__
points = pd.read_parquet(POINTS)
points = points[["traj_id", "t", "lon", "lat"]].assign(t=points["t"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))  # as served
out = model.predict(points, params={"horizon": 4})
print(len(out), out["traj_id"].nunique(), float(out["lon"].mean()), float(out["lat"].mean()), trajfm.__file__)
"""


def test_logged_model_loads_in_a_fresh_process_from_its_own_code(model_copy, registered, tmp_path):
    root = registered[0]
    pre = sorted(root.glob("preprocess/*/points.parquet"))[0]
    points = pd.read_parquet(pre)
    first = points[points["traj_id"].isin(points["traj_id"].unique()[:3])]
    first.to_parquet(tmp_path / "points.parquet")
    repo = str(Path(__file__).resolve().parents[1])
    code = f"REPO={repo!r}; MODEL={str(model_copy)!r}; POINTS={str(tmp_path / 'points.parquet')!r}\n" + FRESH
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, check=False, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    n, n_traj, lon, lat, where = proc.stdout.split()[-5:]
    assert int(n) == 12 and int(n_traj) == 3
    assert -75.5 < float(lon) < -72.5 and 39.5 < float(lat) < 41.5  # New York harbour, lon/lat not swapped
    assert where.startswith(str(model_copy))


def test_csv_input_and_the_cadence_contract(model_copy, registered):
    import mlflow
    from mlflow.pyfunc.scoring_server import parse_csv_input

    root = registered[0]
    points = pd.read_parquet(sorted(root.glob("preprocess/*/points.parquet"))[0])
    two = points[points["traj_id"].isin(points["traj_id"].unique()[:2])][["traj_id", "t", "lon", "lat"]]
    model = mlflow.pyfunc.load_model(str(model_copy))
    csv = two.to_csv(index=False)
    from io import StringIO

    out = model.predict(parse_csv_input(StringIO(csv), schema=model.metadata.get_input_schema()), params={"horizon": 3})
    assert len(out) == 6 and set(out.columns) >= {"traj_id", "step", "t", "lon", "lat", "radius_m_q50"}
    numeric_ids = two.assign(traj_id=two["traj_id"].factorize()[0])  # a CSV whose ids read as integers
    out2 = model.predict(
        parse_csv_input(StringIO(numeric_ids.to_csv(index=False)), schema=model.metadata.get_input_schema()),
        params={"horizon": 3},
    )
    assert sorted(out2["traj_id"].unique()) == ["0", "1"]
    # raw points every 10 s for a model trained at 60 s: refused with the reason, or resampled on request
    by = two.groupby("traj_id")
    fast = two.assign(
        t=(by["t"].transform("first") + pd.to_timedelta(by.cumcount() * 10, unit="s")).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    with pytest.raises(Exception, match="cadence"):
        model.predict(fast, params={"horizon": 3})
    resampled = model.predict(fast, params={"horizon": 3, "resample_s": "model"})
    assert len(resampled) == 6
