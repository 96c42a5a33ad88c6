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
    assert {
        f"0_mixture_{n}.png"
        for n in ("trajectory_map", "trajectories", "error_vs_horizon", "calibration", "generation")
    } <= set(linked)
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
            found = {
                a.key: a
                for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
            }
    assert set(keys) <= set(found)
    assert "constant_velocity" in str(found["evaluation-metrics"].data) and "forecast.ade_m@10" in str(
        found["evaluation-metrics"].data
    )
    assert "# trajfm evaluation report" in found["evaluation-report"].data
    # the plots render in any browser: inline data URIs, no local path as an image or link target
    from tasks._artifacts import local_targets

    report_md = found["evaluation-report"].data
    assert local_targets(report_md) == []
    assert report_md.count("](data:image/png;base64,") >= 3 and "![trajectory_map](data:image/png;base64," in report_md
    results = Path(r["results"])
    assert results.is_relative_to(root) and json.loads(results.read_text())["metrics"] == r["metrics"]
    assert Path(r["report"]).is_file() and (Path(r["report"]).parent / "0_results_trajectories.png").is_file()
    files = {
        Path(f.path).name
        for f in MlflowClient(tracking_uri=tracking_uri(root)).list_artifacts(r["mlflow_run_id"], "report")
    }
    assert (
        "report.md" in files and "0_results_error_vs_horizon.png" in files and "0_results_trajectory_map.png" in files
    )


def test_trajectory_map_draws_context_truth_forecast_and_its_error_in_degrees(evaluated, tmp_path):
    """The map is in lon/lat (not metres), around New York harbour, with one error ellipse per step."""
    from matplotlib.patches import Ellipse

    from trajfm.evaluate.maps import error_radius_deg, trajectory_map_figure
    from trajfm.evaluate.report import load_plot_data

    _, out, _ = evaluated
    path = out / "mixture.json"
    d = load_plot_data(path, json.loads(path.read_text()))
    fig = trajectory_map_figure(d)
    ax = fig.axes[0]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    assert -75.5 < x0 < x1 < -72.5 and 39.5 < y0 < y1 < 41.5  # degrees, lon on x (order not swapped)
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == int(d["horizon"])
    w, h = error_radius_deg(float(d["err_model_m"][-1]), 40.7)
    assert (
        ellipses[-1].height == pytest.approx(2 * h, rel=1e-3) and ellipses[-1].width > ellipses[-1].height
    )  # cos(lat) < 1
    labels = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"context", "truth", "forecast", "sampled futures", "model mean error at the step"} <= labels
    fig.savefig(tmp_path / "map.png")
    _png_ok(tmp_path / "map.png")


def test_embedded_images_leave_no_local_target(tmp_path):
    from tasks._artifacts import embed_images, local_targets

    (tmp_path / "a.png").write_bytes(PNG_SIGNATURE + b"rest")
    md = f"# r\n\n![a](a.png)\n\n![b]({tmp_path}/missing.png)\n\n[docs](file:///x/index.html) [ok](https://example.org)\n"
    assert local_targets(md) == ["a.png", f"{tmp_path}/missing.png", "file:///x/index.html"]
    out = embed_images(md, tmp_path, fallback_url="http://127.0.0.1:5000/#/runs/1/artifacts/report")
    assert "![a](data:image/png;base64," in out
    assert "[b (missing.png)](http://127.0.0.1:5000/#/runs/1/artifacts/report/missing.png)" in out
    assert local_targets(embed_images("![b](missing.png)", tmp_path)) == []  # no fallback: plain text


def test_mlflow_run_link_only_with_a_tracking_server(monkeypatch, tmp_path):
    """A link to the run page when MLFLOW_TRACKING_URI is a server; nothing for a local database
    (its 'page' would be a file only this machine has)."""
    import mlflow

    from tasks._artifacts import mlflow_run_url

    class _Run:
        class info:
            experiment_id = "7"

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", lambda self, run_id: _Run())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_run_url("abc", str(tmp_path)) is None  # sqlite under the data root
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000/")
    assert mlflow_run_url("abc", str(tmp_path)) == "http://127.0.0.1:5000/#/experiments/7/runs/abc"
    assert mlflow_run_url(None, str(tmp_path)) is None
