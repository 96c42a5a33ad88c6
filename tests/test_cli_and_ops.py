"""The command line, the data root, the stage writer and the library's import hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from trajfm.cli import _parse_params, main
from trajfm.quality.params import SPEED_TOLERANCE, processed_gate_params
from trajfm.store import StageWriter, data_root, frame_hash, is_complete, root_identity

REPO = Path(__file__).resolve().parents[1]


def test_param_parsing_reads_json_values_and_strings():
    p = _parse_params(
        ["--epochs", "2", "--preset", "tutorial", "--sources", '["a.traj"]', "--window-params", '{"window": 16}']
    )
    assert p == {"epochs": 2, "preset": "tutorial", "sources": ["a.traj"], "window_params": {"window": 16}}
    with pytest.raises(SystemExit):
        _parse_params(["epochs", "2"])


def test_unknown_flow_is_refused():
    with pytest.raises(SystemExit):
        main(["run", "nope"])


def test_data_root_follows_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAJFM_HOME", str(tmp_path / "env"))
    assert data_root() == (tmp_path / "env").resolve()
    assert data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()


def test_root_identity_is_stable_and_changes_when_the_root_is_wiped(tmp_path):
    a = root_identity(tmp_path / "r")
    assert root_identity(tmp_path / "r") == a
    import shutil

    shutil.rmtree(tmp_path / "r")
    assert root_identity(tmp_path / "r") != a


def test_stage_writer_is_atomic(tmp_path):
    df = pd.DataFrame({"a": [1, 2]})
    with pytest.raises(RuntimeError):
        with StageWriter(tmp_path, "s", "k") as w:
            w.write_frame("points", df)
            raise RuntimeError("crash mid-write")
    assert not (tmp_path / "s" / "k").exists() and list((tmp_path / "s").iterdir()) == []
    with StageWriter(tmp_path, "s", "k") as w:
        w.write_frame("points", df)
    assert is_complete(tmp_path / "s" / "k")
    assert json.loads((tmp_path / "s" / "k" / "manifest.json").read_text())["files"]["points"]["hash"] == frame_hash(df)


def test_processed_gate_params_follow_the_preprocess_params():
    manifest = {
        "params": {
            "vessel": {"v_max_mps": 30.0, "min_duration_s": 600.0, "interval_s": 60.0},
            "person": {"v_max_mps": 50.0, "min_duration_s": 120.0, "interval_s": 10.0},
        }
    }
    assert processed_gate_params(manifest, ["vessel"]) == {"v_max_mps": 30.0 * (1 + SPEED_TOLERANCE), "min_points": 10}
    assert processed_gate_params(manifest, ["vessel", "person"])["v_max_mps"] == 50.0 * (1 + SPEED_TOLERANCE)
    assert processed_gate_params(manifest, ["vessel"], {"v_max_mps": 1.0})["v_max_mps"] == 1.0


def test_library_imports_without_prefect_mlflow_or_gx():
    code = (
        "import sys, trajfm, trajfm.data.ingest, trajfm.data.preprocess, trajfm.features.windows, trajfm.train, "
        "trajfm.evaluate.run, trajfm.registry, trajfm.quality.gate, trajfm.cli\n"
        "heavy = [m for m in ('prefect', 'mlflow', 'great_expectations') if m in sys.modules]\n"
        "print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_no_library_module_imports_prefect():
    offenders = [
        p
        for p in (REPO / "trajfm").rglob("*.py")
        if any(line.lstrip().startswith(("import prefect", "from prefect")) for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_train_command_trains_a_preset_on_a_features_stage(tmp_path, capsys):
    import numpy as np

    from trajfm.features.windows import WindowParams, make_features
    from trajfm.geo import offset_lonlat

    frames = []
    for i in range(8):  # eight gently turning tracks over eight days, 60 s apart
        n = 70
        t = pd.date_range(f"2020-06-{1 + i} 00:00", periods=n, freq="60s", tz="UTC")
        heading = np.cumsum(np.full(n, 0.02 * (i % 3 - 1)))
        east, north = np.cumsum(300 * np.cos(heading)), np.cumsum(300 * np.sin(heading))
        lon, lat = offset_lonlat(np.full(n, -74.0 + 0.05 * i), np.full(n, 40.5), east, north)
        frames.append(
            pd.DataFrame(
                {
                    "traj_id": f"v{i}",
                    "obj_id": f"v{i}",
                    "t": t,
                    "lon": lon,
                    "lat": lat,
                    "kind": "vessel",
                    "source": "gen",
                }
            )
        )
    with StageWriter(tmp_path, "preprocess", "gen") as w:
        w.write_frame("points", pd.concat(frames, ignore_index=True))
    feats = make_features(w.final, root=tmp_path, params=WindowParams(window=16, stride=16, min_points=8))
    assert (
        main(
            [
                "train",
                "--preset",
                "tutorial",
                "--features-dir",
                str(feats),
                "--data-root",
                str(tmp_path),
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (Path(out["train_dir"]) / "model.pt").is_file() and out["n_params"] > 0


def test_presets_command_lists_the_tutorial(capsys):
    assert main(["presets"]) == 0
    assert "tutorial" in capsys.readouterr().out


def test_ingest_cache_key_sees_files_added_to_a_source_directory(tmp_path):
    from trajfm.data.catalog import SMALL_SLICE, embedded_files
    from trajfm.data.ingest import planned_key

    src = tmp_path / "src"
    src.mkdir()
    small = embedded_files(SMALL_SLICE)[0]
    (src / "a.traj").write_bytes(small.read_bytes())
    before = planned_key([str(src)])
    assert planned_key([str(src)]) == before
    (src / "b.traj").write_bytes(small.read_bytes())
    assert planned_key([str(src)]) != before
