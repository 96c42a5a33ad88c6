"""``trajfm evaluate``: any model (local file, train directory, ``models:/`` URI) on any data.

A tiny ``tutorial`` model is trained for a few steps on the 9,091-point NY Harbor slice through
the library stages; it is then evaluated on that slice (embedded), on real GeoLife files
(``--format geolife``) and through the MLflow registry of a temporary data root.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from trajfm.cli import main as trajfm_main
from trajfm.evaluate.cli import main

TINY = {"n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 32, "dropout": 0.0}
TASKS = "forecast,recovery"


def train_tiny(root: Path, preset: str = "tutorial", steps: int = 8, **model) -> Path:
    """A train stage directory: ``preset`` shrunk to ``TINY`` (+ ``model``), ``steps`` steps on the slice."""
    from trajfm.data.catalog import embedded_files
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess
    from trajfm.features.windows import make_features
    from trajfm.train import run_training

    pre = preprocess(ingest(embedded_files("small"), root=root), root=root, scheduler="sync")
    feats = make_features(pre, root=root)
    overrides = {
        "epochs": 1,
        "max_steps": steps,
        "batch_size": 16,
        "warmup_steps": 2,
        "device": "cpu",
        "seed": 0,
        "progress": False,
    }
    return Path(
        run_training(feats, root=root, preset=preset, model_overrides={**TINY, **model}, train_overrides=overrides)
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_root")
    return root, train_tiny(root)


def _run(capsys, *argv) -> tuple[int, str]:
    rc = trajfm_main(["evaluate", *map(str, argv)])
    return rc, capsys.readouterr().out


def test_evaluate_local_model_writes_json_and_prints_a_table(tiny, tmp_path, capsys):
    root, train_dir = tiny
    out = tmp_path / "r.json"
    rc, printed = _run(
        capsys,
        "--model",
        train_dir / "model.pt",
        "--data",
        "embedded:small",
        "--tasks",
        TASKS,
        "--data-root",
        root,
        "--out",
        out,
    )
    assert rc == 0
    res = json.loads(out.read_text())
    m = res["metrics"]
    for key in (
        "forecast.ade_m@10.model",
        "forecast.ade_m@10.constant_velocity",
        "forecast.fde_m@10.model",
        "recovery.random_mae_m.linear_interp",
    ):
        assert key in m and math.isfinite(m[key]) and m[key] > 0, key
    for key in m:  # <task>.<metric>.<predictor>, or a count with no predictor
        assert key.split(".")[0] in ("forecast", "recovery"), key
    ing, pre = res["accounting"]["ingest"], res["accounting"]["preprocess"]
    assert ing["rows_read"] == 9091 == ing["rows_kept"] + ing["rows_quarantined"]
    assert pre["rows_in"] == pre["rows_kept"] + pre["rows_quarantined"] == ing["rows_kept"]
    assert res["model"]["source"] == "checkpoint" and res["model"]["preset"] == "tutorial"
    # the model's own normalization (from its training data), not statistics of the evaluated data
    from trajfm.model.checkpoint import load_checkpoint

    saved = load_checkpoint(train_dir / "model.pt")["extra"]["stats"]
    assert res["model"]["normalization"]["mean"] == pytest.approx([float(x) for x in saved["mean"]])
    assert res["split"]["eval_windows"] > 0 and res["split"]["fit_windows"] > 0
    # the table: a header with the predictors, one row per metric, values as in the JSON
    headers = [line for line in printed.splitlines() if line.startswith("metric")]
    assert len(headers) == 2  # one table per task
    assert "model" in headers[0] and "constant_velocity" in headers[0] and "linear_interp" in headers[1]
    row = next(line for line in printed.splitlines() if line.startswith("forecast.ade_m@10 "))
    assert f"{m['forecast.ade_m@10.model']:,.1f}" in row
    assert (tmp_path / "r.plots.npz").is_file() and res["plot_data"] == "r.plots.npz"


def test_same_seed_same_json_other_seed_other_masks(tiny, tmp_path):
    from trajfm.evaluate.suite import evaluate_model

    root, train_dir = tiny
    a = evaluate_model(train_dir, "embedded:small", tasks=TASKS, root=root, seed=3, out=tmp_path / "a.json")
    b = evaluate_model(train_dir, "embedded:small", tasks=TASKS, root=root, seed=3, out=tmp_path / "b.json")
    c = evaluate_model(train_dir, "embedded:small", tasks=TASKS, root=root, seed=4)
    assert a["metrics"] == b["metrics"]
    assert (
        json.loads((tmp_path / "a.json").read_text())["metrics"]
        == json.loads((tmp_path / "b.json").read_text())["metrics"]
    )
    with np.load(tmp_path / "a.plots.npz") as za, np.load(tmp_path / "b.plots.npz") as zb:
        assert all(np.array_equal(za[k], zb[k]) for k in za.files)
    # forecasts are deterministic; random masking for recovery follows the seed
    assert a["metrics"]["forecast.ade_m@10.model"] == c["metrics"]["forecast.ade_m@10.model"]
    assert a["metrics"]["recovery.random_mae_m.linear_interp"] != c["metrics"]["recovery.random_mae_m.linear_interp"]


def test_train_directory_and_registry_uris_give_the_same_numbers(tiny, tmp_path, monkeypatch):
    from trajfm.evaluate.suite import evaluate_model
    from trajfm.registry import log_and_register

    root, train_dir = tiny
    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    reg = log_and_register(root, "tiny", {"preset": "tutorial"}, {"test_ade_m": 1.0}, [], train_dir / "model.pt")
    local = evaluate_model(train_dir, "embedded:small", tasks="forecast", root=root)
    for uri in ("models:/trajfm@champion", f"models:/trajfm/{reg.version}", f"runs:/{reg.run_id}/model"):
        res = evaluate_model(uri, "embedded:small", tasks="forecast", root=root)
        if uri.startswith("models:/"):
            assert res["model"]["source"] == "registry" and res["model"]["version"] == reg.version
        assert res["model"]["checkpoint_sha256"] == local["model"]["checkpoint_sha256"]
        assert res["metrics"] == local["metrics"]
    assert not (tmp_path / "mlruns").exists()


def test_registry_uris_resolve_in_the_data_roots_store_whatever_the_global_one(tiny, tmp_path, monkeypatch):
    """A fresh ``trajfm evaluate`` process has MLflow's default global store (``./mlflow.db``):
    ``models:/`` must still resolve in ``--data-root``'s store, and the global URIs stay as they were."""
    import mlflow

    from trajfm.evaluate.suite import evaluate_model
    from trajfm.registry import log_and_register

    root, train_dir = tiny
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    log_and_register(root, "tiny", {"preset": "tutorial"}, {"test_ade_m": 1.0}, [], train_dir / "model.pt")
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    for key in keys:  # recorded as absent: the teardown removes whatever set_*_uri exports
        monkeypatch.delenv(key, raising=False)
    mlflow.set_tracking_uri(elsewhere)  # as a new process would default to ./mlflow.db
    mlflow.set_registry_uri(elsewhere)
    for key in keys:  # set_*_uri export them; a new process has none
        os.environ.pop(key, None)
    try:
        res = evaluate_model("models:/trajfm@champion", "embedded:small", tasks="forecast", root=root)
        assert res["model"]["source"] == "registry" and "forecast.ade_m@10.model" in res["metrics"]
        assert mlflow.get_tracking_uri() == elsewhere and mlflow.get_registry_uri() == elsewhere
        assert not any(key in os.environ for key in keys)  # the environment as it was
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for key in keys:
            os.environ.pop(key, None)
    with pytest.raises(ValueError, match="not in the model registry"):
        evaluate_model("models:/trajfm@nosuchalias", "embedded:small", tasks="forecast", root=root)


def test_a_preprocess_stage_directory_is_data_too(tiny):
    from trajfm.evaluate.suite import evaluate_model

    root, train_dir = tiny
    raw = evaluate_model(train_dir, "embedded:small", tasks="forecast", root=root)
    staged = evaluate_model(train_dir, raw["stages"]["preprocess"], tasks="forecast", root=root)
    assert staged["metrics"] == raw["metrics"] and staged["accounting"] == raw["accounting"]
    with pytest.raises(ValueError, match="already preprocessed"):
        evaluate_model(train_dir, raw["stages"]["preprocess"], format="geolife", tasks="forecast", root=root)


def test_geolife_files_with_format(tiny, shared_data, tmp_path, capsys):
    root, train_dir = tiny
    out = tmp_path / "geolife.json"
    rc, printed = _run(
        capsys,
        "--model",
        train_dir,
        "--data",
        shared_data / "geolife" / "000",
        "--format",
        "geolife",
        "--tasks",
        "forecast",
        "--data-root",
        root,
        "--out",
        out,
    )
    assert rc == 0, printed
    res = json.loads(out.read_text())
    ing = res["accounting"]["ingest"]
    assert ing["rows_read"] > 1000 and ing["rows_read"] == ing["rows_kept"] + ing["rows_quarantined"]
    assert res["model"]["source"] == "train_dir" and res["data"]["format"] == "geolife"
    assert math.isfinite(res["metrics"]["forecast.ade_m@10.model"])
    # people in Beijing, not vessels in New York: the windows are where the data is
    with np.load(tmp_path / "geolife.plots.npz") as z:
        assert 115 < z["ex_true_lon"].mean() < 118 and 39 < z["ex_true_lat"].mean() < 41


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope.pt", "--data", "embedded:small"], "no such checkpoint"),
        (
            ["--model", "models:/trajfm@champion", "--data", "embedded:small", "--data-root", "{empty}"],
            "no MLflow store",
        ),
        (["--model", "{train}", "--data", "embedded:small", "--tasks", "forecast,teleport"], "unknown task"),
        (["--model", "{train}", "--data", "embedded:small", "--format", "shapefile"], "unknown format"),
        (["--model", "{train}", "--data", "embedded:nosuchfile"], "unknown embedded"),
        (["--model", "{train}"], "give --model URI and --data PATH"),
        (["--protocol", "p.yaml", "--model", "{train}"], "do not combine"),
        (["--model", "{train}", "--data", "embedded:small", "--params", "[1]"], "JSON object"),
    ],
)
def test_bad_input_is_a_clear_error(tiny, tmp_path, capsys, argv, message):
    root, train_dir = tiny
    argv = [a.replace("{train}", str(train_dir)).replace("{empty}", str(tmp_path / "empty")) for a in argv]
    root_args = [] if "--data-root" in argv else ["--data-root", str(root)]
    with pytest.raises(SystemExit) as exc:
        main([*argv, *root_args, "--out", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert not (tmp_path / "empty" / "mlflow.db").exists()  # a failed lookup creates no store
