"""End to end: the Prefect ``pipeline`` flow on a small real slice (one day of NY Harbor AIS).

Starts Prefect's temporary local API once for the module, trains the ``tutorial`` preset for
one epoch, and checks every stage's outputs, the row accounting, the artifacts, the MLflow
registry and the gate that stops the flow before training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trajfm.data.catalog import SMALL_SLICE, embedded_files
from trajfm.store import read_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def small_run(prefect_api, tmp_path_factory):
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("root")
    sources = [str(p) for p in embedded_files(SMALL_SLICE)]
    result = pipeline(
        sources=sources,
        data_root=str(root),
        preset="tutorial",
        epochs=1,
        batch_size=64,
        train_overrides={"warmup_steps": 10},
        context_len=12,
        horizon=6,
        n_workers=2,
    )
    return root, sources, result


def test_every_stage_writes_its_outputs(small_run):
    root, _, r = small_run
    for key in ("ingest_dir", "preprocess_dir", "features_dir", "train_dir"):
        assert (Path(r[key]) / "manifest.json").is_file(), key
        assert Path(r[key]).is_relative_to(root)
    assert (Path(r["train_dir"]) / "model.pt").is_file()
    assert r["validation"] == {"raw": True, "processed": True}
    assert (root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").is_file()


def test_rows_are_accounted_for_at_every_stage(small_run):
    _, _, r = small_run
    ing, pre = read_manifest(r["ingest_dir"]), read_manifest(r["preprocess_dir"])
    assert ing["rows_read"] == 9091  # the whole file, every line a point
    assert ing["rows_read"] == ing["rows_kept"] + ing["rows_quarantined"]
    assert pre["rows_in"] == ing["rows_kept"]
    assert pre["rows_in"] == pre["rows_kept"] + pre["rows_quarantined"]
    assert sum(pre["quarantined_by_reason"].values()) == pre["rows_quarantined"]


def test_metrics_are_in_metres_next_to_the_baseline(small_run):
    _, _, r = small_run
    m = r["metrics"]
    assert m["n_windows"] > 0 and m["horizon"] == 6 and m["context_len"] == 12
    for k in ("ade_m", "fde_m", "fde_m@1", "cv_ade_m", "cv_fde_m", "cv_fde_m@1"):
        assert 0.0 < m[k] < 50_000.0, (k, m[k])  # vessels at 60 s: metres, not degrees
    assert m["fde_m"] >= m["fde_m@1"] and m["cv_fde_m"] >= m["cv_fde_m@1"]


def test_model_is_registered_as_champion_and_serves_forecasts(small_run):
    import mlflow
    import pandas as pd

    from trajfm.registry.tracking import tracking_uri

    root, sources, r = small_run
    reg = r["registration"]
    assert reg["version"] == 1 and reg["champion_version"] == 1 and reg["promoted"]
    mlflow.set_tracking_uri(tracking_uri(root))
    try:
        model = mlflow.pyfunc.load_model("models:/trajfm@champion")
        points = pd.read_parquet(Path(r["preprocess_dir"]) / "points.parquet")
        first = points[points["traj_id"] == points["traj_id"].iloc[0]].head(20)
        served = first[["traj_id", "t", "lon", "lat"]].assign(
            t=first["t"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
        )  # as JSON/CSV send it
        out = model.predict(served, params={"horizon": 4})
    finally:
        mlflow.set_tracking_uri(None)
    assert list(out["step"]) == [1, 2, 3, 4]
    # Forecasts stay near New York harbour: lon ~ -74, lat ~ 40.6 (order not swapped).
    assert out["lon"].between(-75.5, -72.5).all() and out["lat"].between(39.5, 41.5).all()


def test_artifacts_are_published(small_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = {
        "ingest-row-accounting",
        "preprocess-row-accounting",
        "validation-raw",
        "validation-processed",
        "features-splits",
        "forecast-metrics",
        "registration",
        "data-docs-raw",
        "data-docs-processed",
    }
    with get_client(sync_client=True) as client:
        found = {
            a.key
            for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=sorted(keys))))
        }
    assert keys <= found


def test_the_mlflow_run_carries_loss_curves_error_vs_horizon_and_the_config(small_run):
    import json

    import pytest
    from mlflow import MlflowClient

    from trajfm.registry.tracking import tracking_uri

    root, _, r = small_run
    m = r["metrics"]
    assert len(m["error_by_step_m"]) == m["horizon"] == len(m["cv_error_by_step_m"])
    assert sum(m["error_by_step_m"]) / m["horizon"] == pytest.approx(m["ade_m"], rel=1e-9)  # one source of truth
    assert m["error_by_step_m"][-1] == pytest.approx(m["fde_m"], rel=1e-9)
    client = MlflowClient(tracking_uri=tracking_uri(root))
    run_id = r["registration"]["run_id"]
    files = {f.path for f in client.list_artifacts(run_id, "plots")} | {f.path for f in client.list_artifacts(run_id)}
    assert {"plots/loss_curve.png", "plots/error_vs_horizon.png", "config.json"} <= files
    config = json.loads(Path(client.download_artifacts(run_id, "config.json")).read_text())
    assert config["preset"] == "tutorial" and config["train"]["epochs"] == 1 and config["eval"]["horizon"] == 6


def test_no_artifact_points_at_a_local_file(small_run):
    """Every artifact of the run renders in a browser on another machine: no image or link target
    is a local file path (markdown rendered with a CommonMark parser; link artifacts too)."""
    from prefect.client.orchestration import get_client

    from tasks._artifacts import is_local, local_targets

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts()
    assert len(artifacts) >= 9
    bad = []
    for a in artifacts:
        if a.type == "markdown":
            bad += [(a.key, t) for t in local_targets(str(a.data))]
        elif a.type == "link":
            target = str(a.data).split("](")[-1].rstrip(")") if str(a.data).startswith("[") else str(a.data)
            bad += [(a.key, target)] if is_local(target) else []
    assert not bad, bad


def _first_pipeline_run(client):
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])), sort=FlowRunSort.START_TIME_ASC
    )
    return runs[0]


def test_every_subflow_run_is_named_by_its_stage(small_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        parent = _first_pipeline_run(client)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))
        )
    assert parent.name == "pipeline-tutorial"
    assert sorted(c.name for c in children) == sorted(
        [
            "ingest",
            "validate-raw",
            "preprocess",
            "validate-processed",
            "features",
            "train-tutorial",
            "calibrate",
            "evaluate-test",
            "register-trajfm",
        ]
    )


def test_parent_run_has_the_summary_artifact_with_links(small_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    _, _, r = small_run
    with get_client(sync_client=True) as client:
        parent = _first_pipeline_run(client)
        (summary,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[parent.id]))
        )
        ingest_art = [a for a in client.read_artifacts() if a.key == "ingest-row-accounting"]
    assert summary.key == "pipeline-summary" and summary.type == "markdown"
    text = summary.data
    ing, pre, feats = (read_manifest(r[k]) for k in ("ingest_dir", "preprocess_dir", "features_dir"))
    assert f"read {ing['rows_read']:,} = kept {ing['rows_kept']:,} + quarantined {ing['rows_quarantined']:,}" in text
    assert f"in {pre['rows_in']:,} = kept {pre['rows_kept']:,}" in text
    for split, n in feats["windows"].items():
        assert f"| {split} | {n:,} |" in text
    m = r["metrics"]
    assert f"| ADE | {m['ade_m']:,.1f} | {m['cv_ade_m']:,.1f} |" in text
    assert f"version **{r['registration']['version']}**" in text
    assert f"/artifacts/artifact/{ingest_art[0].id}" in text  # the stage's artifact, linked
    assert text.count("/runs/flow-run/") == 9  # every stage's own run


def test_rerun_on_same_data_reuses_every_stage(small_run):
    from flows.pipeline import pipeline

    root, sources, r = small_run
    again = pipeline(
        sources=sources,
        data_root=str(root),
        preset="tutorial",
        epochs=1,
        batch_size=64,
        train_overrides={"warmup_steps": 10},
        context_len=12,
        horizon=6,
        n_workers=2,
    )
    for key in ("ingest_dir", "preprocess_dir", "features_dir", "train_dir"):
        assert again[key] == r[key]
    assert again["metrics"] == r["metrics"]  # deterministic: same data + config -> same metrics


def test_failed_gate_stops_the_flow_before_training(prefect_api, tmp_path):
    from flows.pipeline import pipeline

    root = tmp_path / "root"
    sources = [str(p) for p in embedded_files(SMALL_SLICE)]
    state = pipeline(
        sources=sources,
        data_root=str(root),
        epochs=1,
        quality_params={"v_max_mps": 0.5},
        return_state=True,
    )
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert "speed" in message and "unexpected" in message
    assert not (root / "train").exists()
