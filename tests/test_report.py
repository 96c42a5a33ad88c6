"""``trajfm report``: markdown + PNGs from results files, calibration of a mixture head, MLflow.

A tiny mixture-head model (3 components) is trained a few steps on the NY Harbor slice and
evaluated; the report must draw its sampled futures and calibration, the PNGs must decode, and
the report directory must arrive in MLflow as run artifacts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_evaluate_cli import train_tiny
from trajfm.evaluate.report import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from trajfm.evaluate.suite import evaluate_model

    root = tmp_path_factory.mktemp("report_root")
    out = tmp_path_factory.mktemp("results")
    mixture = train_tiny(root, steps=10, head="mixture", n_mixture=3)
    mse = train_tiny(root, steps=10)
    params = {"forecast": {"context_len": 12, "horizons": [1, 3, 6]}}
    for name, model in (("mixture", mixture), ("mse", mse)):
        evaluate_model(model, "embedded:small", tasks="forecast", root=root, params=params, out=out / f"{name}.json")
    return root, out, mse


def _png_ok(path: Path) -> tuple[int, int]:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)  # decodes the whole file
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0  # not a blank canvas
    return img.shape[:2]


def test_plot_data_holds_calibration_for_a_mixture_head(evaluated):
    _, out, _ = evaluated
    with np.load(out / "mixture.plots.npz") as z:
        assert bool(z["mixture"]) and int(z["horizon"]) == 6
        cov, levels = z["calibration_coverage"], z["calibration_levels"]
        assert cov.shape == (len(levels), 6) and ((cov >= 0) & (cov <= 1)).all()
        assert (np.diff(cov, axis=0) >= 0).all()  # a larger region never holds fewer true points
        assert z["ex_sample_lon"].shape[0] == 16  # sampled futures of the example windows
        assert z["err_model_m"].shape == (6,) and (z["err_model_m"] > 0).all()
        assert len(z["gen_step_m"]) > 0 and len(z["real_step_m"]) > 0
    with np.load(out / "mse.plots.npz") as z:  # a point head has no distribution to calibrate
        assert not bool(z["mixture"]) and "calibration_coverage" not in z.files


def test_report_renders_markdown_and_valid_pngs(evaluated, tmp_path, capsys):
    _, out, _ = evaluated
    rep = tmp_path / "rep"
    assert main(["--results", str(out / "mixture.json"), str(out / "mse.json"), "--out", str(rep)]) == 0
    assert capsys.readouterr().out.strip() == str(rep / "report.md")
    text = (rep / "report.md").read_text()
    res = json.loads((out / "mixture.json").read_text())
    assert "## mixture.json" in text and "## mse.json" in text
    assert "| metric | model | constant_velocity |" in text
    assert f"{res['metrics']['forecast.ade_m@6.model']:,.1f}" in text
    assert "read 9,091 = kept 9,091 + quarantined 0" in text
    linked = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert {f"0_mixture_{n}.png" for n in ("trajectories", "error_vs_horizon", "calibration", "generation")} <= set(linked)
    assert "1_mse_calibration.png" not in linked and "1_mse_trajectories.png" in linked
    for name in linked:
        _png_ok(rep / name)


def test_report_errors_are_clear(evaluated, tmp_path, capsys):
    _, out, _ = evaluated
    with pytest.raises(SystemExit) as exc:
        main(["--results", str(tmp_path / "missing.json"), "--out", str(tmp_path / "rep")])
    assert exc.value.code == 2 and "does not exist" in capsys.readouterr().err
    bad = tmp_path / "other.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(SystemExit):
        main(["--results", str(bad), "--out", str(tmp_path / "rep")])
    assert "not a trajfm results file" in capsys.readouterr().err


def test_report_is_logged_to_mlflow(evaluated, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from trajfm.evaluate.report import log_report, render_report
    from trajfm.registry import tracking_uri

    root, out, _ = evaluated
    monkeypatch.chdir(tmp_path)
    rep = tmp_path / "rep"
    render_report([out / "mixture.json"], rep)
    metrics = json.loads((out / "mixture.json").read_text())["metrics"]
    run_id = log_report(rep, root, run_name="tiny report", metrics=metrics)
    client = MlflowClient(tracking_uri=tracking_uri(root))
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "report")}
    assert {"report.md", "0_mixture_calibration.png", "0_mixture_trajectories.png"} <= files
    logged = client.get_run(run_id).data.metrics
    assert logged["forecast.ade_m_at_6.model"] == pytest.approx(metrics["forecast.ade_m@6.model"])
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_evaluate_model_flow_publishes_artifacts_and_logs_the_report(evaluated, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.testing.utilities import prefect_test_harness

    from flows.evaluate import evaluate_model_flow
    from trajfm.registry import tracking_uri

    root, _, model = evaluated
    monkeypatch.chdir(tmp_path)
    with prefect_test_harness(server_startup_timeout=120):
        r = evaluate_model_flow(model_uri=str(model), data="embedded:small", tasks=["forecast"], data_root=str(root))
        keys = ["evaluation-metrics", "evaluation-report"]
        with get_client(sync_client=True) as client:
            found = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))}
    assert set(keys) <= set(found)
    assert "constant_velocity" in str(found["evaluation-metrics"].data) and "forecast.ade_m@10" in str(found["evaluation-metrics"].data)
    assert "# trajfm evaluation report" in found["evaluation-report"].data
    results = Path(r["results"])
    assert results.is_relative_to(root) and json.loads(results.read_text())["metrics"] == r["metrics"]
    assert Path(r["report"]).is_file() and (Path(r["report"]).parent / "0_results_trajectories.png").is_file()
    files = {Path(f.path).name for f in MlflowClient(tracking_uri=tracking_uri(root)).list_artifacts(r["mlflow_run_id"], "report")}
    assert "report.md" in files and "0_results_error_vs_horizon.png" in files
