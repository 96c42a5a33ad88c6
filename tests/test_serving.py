"""Servers, for real, on free loopback ports: ``mlflow models serve`` answers a JSON request of
points with forecast points, and an ``mlflow server`` tracking server takes a registration (its
artifacts proxied into the data root) that ``trajfm registry list --tracking-uri`` then lists.

Each test starts one server process and kills it in a ``finally``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from helpers import free_port  # noqa: E402
from trajfm.registry import log_and_register  # noqa: E402
from trajfm.registry.pyfunc import example_points  # noqa: E402
from trajfm.registry.tracking import tracking_uri  # noqa: E402

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
MLFLOW = str(BIN / "mlflow")
# A tracking server imports much of MLflow twice (CLI, then the uvicorn app): it answered after
# 70 s on a 2-core machine at load average 7. Past this wait the test skips (raise it to verify).
SERVER_WAIT_S = float(os.environ.get("TRAJFM_TEST_MLFLOW_SERVER_WAIT_S", "40"))


def _server_env(**extra) -> dict:
    """The environment with the virtualenv's bin first: ``mlflow`` runs ``uvicorn`` by name."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _wait_for(url: str, seconds: float, proc: subprocess.Popen) -> bool:
    """True once ``url`` answers 200; False after ``seconds`` or when the process has exited."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen) -> str:
    """Terminate the server's process group; return what it printed (for failure messages)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    return proc.stdout.read().decode(errors="replace")[-3000:] if proc.stdout else ""


def _start(args: list[str], env: dict, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _tiny_checkpoint(root: Path) -> Path:
    """A tiny ``tutorial`` model trained for 5 steps on synthetic vessel windows (so it carries
    real normalization statistics: its time steps come out near the data's 60 s)."""
    from synthetic_tracks import make_windows, stats_of
    from trajfm.store import StageWriter
    from trajfm.train import run_training

    train, val = make_windows(16, 60, 16, seed=3, stride=8), make_windows(4, 60, 16, seed=4)
    with StageWriter(root, "features", "serving") as w:
        for split, ws in {"train": train, "val": val, "test": val}.items():
            ws.save(w.path / f"{split}.npz")
        w.write_json("stats", stats_of(train))
    out = run_training(
        root / "features" / "serving",
        root=root,
        preset="tutorial",
        model_overrides={"n_layer": 1, "n_head": 2, "d_model": 32, "block_size": 16, "dropout": 0.0},
        train_overrides={
            "epochs": 1,
            "max_steps": 5,
            "batch_size": 16,
            "warmup_steps": 1,
            "device": "cpu",
            "progress": False,
        },
    )
    return out / "model.pt"


def _register(root, **kw):
    return log_and_register(
        root,
        run_name="serve",
        params={"preset": "tutorial"},
        metrics={"test_ade_m": 321.0},
        history=[],
        checkpoint_path=_tiny_checkpoint(Path(root)),
        eval_id="serving",
        **kw,
    )


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_models_serve_answers_points_with_forecast_points(tmp_path, clean_env):
    root = tmp_path / "root"
    assert _register(root).promoted
    port = free_port()
    env = _server_env(MLFLOW_TRACKING_URI=tracking_uri(root))
    proc = _start(
        [
            MLFLOW,
            "models",
            "serve",
            "-m",
            "models:/trajfm@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env,
        tmp_path,
    )
    try:
        assert _wait_for(f"http://127.0.0.1:{port}/ping", 120, proc), "model server did not answer /ping"
        points = example_points(n_traj=3, n_points=8)  # t as ISO-8601 strings
        horizon = 5
        body = {"dataframe_split": points.to_dict(orient="split", index=False), "params": {"horizon": horizon}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            out = pd.DataFrame(json.loads(r.read())["predictions"])
        csv_request = urllib.request.Request(  # the same points as CSV (no params: horizon 10)
            f"http://127.0.0.1:{port}/invocations",
            data=points.to_csv(index=False).encode(),
            headers={"Content-Type": "text/csv"},
        )
        with urllib.request.urlopen(csv_request, timeout=60) as r:
            from_csv = pd.DataFrame(json.loads(r.read())["predictions"])
    except Exception:
        print(_stop(proc))
        raise
    finally:
        _stop(proc)
    assert list(out.columns)[:5] == ["traj_id", "step", "t", "lon", "lat"] and "radius_m_q90" in out.columns
    assert len(from_csv) == 3 * 10 and sorted(from_csv["traj_id"].unique()) == sorted(points["traj_id"].unique())
    assert len(out) == 3 * horizon and sorted(out["traj_id"].unique()) == sorted(points["traj_id"].unique())
    assert np.isfinite(out[["lon", "lat"]].to_numpy()).all()
    assert (
        out["lon"].between(-75, -73).all() and out["lat"].between(40, 41.5).all()
    )  # near New York: degrees, not metres
    last = pd.to_datetime(points["t"], utc=True).groupby(points["traj_id"]).max()
    for tid, g in out.groupby("traj_id"):
        t = pd.to_datetime(g.sort_values("step")["t"], utc=True, format="ISO8601")
        assert list(g.sort_values("step")["step"]) == list(range(1, horizon + 1))
        assert (t.diff().dropna() > pd.Timedelta(0)).all() and t.iloc[0] > last[tid], tid


def test_tracking_server_takes_registrations_and_lists_them(tmp_path, clean_env, capsys, monkeypatch):
    from trajfm.cli import main as trajfm_main

    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = _start(
        [
            MLFLOW,
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(root / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        _server_env(),
        tmp_path,
    )
    try:
        if not _wait_for(f"{uri}/health", SERVER_WAIT_S, proc):
            pytest.skip(f"mlflow server did not start within {SERVER_WAIT_S:g} s (busy machine?): {_stop(proc)[-300:]}")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        first = _register(tmp_path / "client_root")
        assert first.version == 1 and first.promoted
        capsys.readouterr()  # MLflow prints "View run ..." links when a run on a server ends
        code = trajfm_main(["registry", "list", "--tracking-uri", uri, "--json"])
        rows = json.loads(capsys.readouterr().out)
        shown = trajfm_main(["registry", "show", "champion", "--tracking-uri", uri, "--json"])
        info = json.loads(capsys.readouterr().out)
    finally:
        log = _stop(proc)
    assert code == 0 and [(r["version"], r["aliases"], r["value"]) for r in rows] == [(1, "champion", 321.0)], log
    assert shown == 0 and info["run_id"] == first.run_id
    # The artifacts went through the server into its destination, none into the client's root.
    assert list((root / "mlartifacts").rglob("model.pt")), log
    assert not (tmp_path / "client_root" / "mlartifacts").exists() and not (tmp_path / "mlruns").exists()
