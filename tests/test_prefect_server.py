"""The deployments for real: a Prefect server on a free loopback port (temporary PREFECT_HOME), the
``trajfm-process`` pool, ``prefect deploy --all`` from prefect.yaml, a process worker, and
``prefect deployment run pipeline/trajfm-pipeline`` on the 9,091-point NY Harbor slice; the run
must reach COMPLETED and leave a registered champion in the data root's MLflow registry. Also
reads back the ``trajfm-retrain`` deployment's cron schedule from the server.

The commands are those of deployments/README.md. Skips (with the reason) when the server does not
answer within 60 s; every process it starts is stopped at the end.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from trajfm.data.catalog import SMALL_SLICE, embedded_files

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
SERVER_START_S = 60
RUN_TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def cli(args: list[str], env: dict, timeout: int = 180) -> str:
    p = subprocess.run([PREFECT, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"prefect {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def deploy_args() -> list[str]:
    """``--all``; or, while a flow named in prefect.yaml does not exist yet, the deployments whose do."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    present = []
    for d in spec["deployments"]:
        path, name = d["entrypoint"].split(":")
        if hasattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name):
            present.append(d["name"])
    if len(present) == len(spec["deployments"]):
        return ["--all"]
    return [arg for name in present for arg in ("--name", name)]


def _descendants(p: subprocess.Popen) -> list:
    import psutil

    try:
        return psutil.Process(p.pid).children(recursive=True)
    except psutil.Error:
        return []


@pytest.fixture
def server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_SERVICES_SCHEDULER_ENABLED": "false",  # no nightly retrain run during the test
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    started: list[subprocess.Popen] = [proc]
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(
                    f"prefect server did not answer on {url} within {SERVER_START_S} s (see {tmp_path / 'server.log'})"
                )
            time.sleep(0.5)
        yield env, started
    finally:
        for p in reversed(started):  # the worker's flow-run processes and their trainers first
            for child in _descendants(p):
                child.kill()
            if p.poll() is None:
                p.terminate()
        for p in reversed(started):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


def test_deploy_run_pipeline_on_a_real_server(server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from trajfm.registry.tracking import champion_info

    env, started = server
    root = tmp_path / "data-root"
    cli(["work-pool", "create", "trajfm-process", "--type", "process"], env)
    out = cli(["--no-prompt", "deploy", *deploy_args()], env, timeout=240)
    assert "trajfm-pipeline" in out and "trajfm-retrain" in out

    params = {
        "sources": [str(p) for p in embedded_files(SMALL_SLICE)],
        "data_root": str(root),
        "epochs": 1,
        "batch_size": 64,
        "n_workers": 1,
        "context_len": 12,
        "horizon": 6,
        "train_overrides": {"max_steps": 3, "warmup_steps": 1},
    }
    out = cli(["deployment", "run", "pipeline/trajfm-pipeline", "--params", json.dumps(params)], env)
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)
    worker_log = open(tmp_path / "worker.log", "w")
    started.append(
        subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", "trajfm-process"],
            cwd=REPO,
            env=env,
            stdout=worker_log,
            stderr=subprocess.STDOUT,
        )
    )

    with temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            state = client.read_flow_run(run_id).state
            while not state.is_final() and time.monotonic() < deadline:
                time.sleep(2)
                state = client.read_flow_run(run_id).state
            retrain = client.read_deployment_by_name("retrain/trajfm-retrain")
    worker_log.close()
    assert state.is_completed(), f"{state.type}: {state.message}\n{(tmp_path / 'worker.log').read_text()[-4000:]}"

    champion = champion_info(root)
    assert champion is not None and champion["version"] >= 1  # the worker's run registered a model
    assert (root / "train").is_dir() and any((root / "train").iterdir())

    (schedule,) = retrain.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC" and schedule.active
