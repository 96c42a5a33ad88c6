"""Byte-identical preprocess output on (a) the synchronous scheduler, (b) a LocalCluster of two
worker processes and (c) a real cluster started here with the ``dask scheduler`` / ``dask worker``
command lines on 127.0.0.1, passed as ``dask_address``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trajfm.data.preprocess import preprocess

STARTUP_S = 60  # bounded waits: the cluster must be up within this, or the test fails
STOP_S = 10


def _stop(procs: list[subprocess.Popen]) -> None:
    """Terminate, wait a bounded time, then kill what is left."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + STOP_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=STOP_S)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    """``dask scheduler`` on a free loopback port plus two ``dask worker`` processes (1 thread each)."""
    pytest.importorskip("distributed")
    from distributed import Client

    tmp = tmp_path_factory.mktemp("cli_cluster")
    dask_cli = Path(sys.executable).with_name("dask")
    if not dask_cli.exists():
        pytest.skip(f"no dask command line next to {sys.executable}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    info = tmp / "scheduler.json"
    procs: list[subprocess.Popen] = []
    logs = []

    def start(args, name):
        log = open(tmp / f"{name}.log", "w")
        logs.append(log)
        procs.append(subprocess.Popen([str(dask_cli), *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp))

    try:
        # Port 0: the scheduler picks a free loopback port and writes its address to the file.
        start(
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)],
            "scheduler",
        )
        deadline = time.monotonic() + STARTUP_S
        while not info.exists():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dask scheduler did not start: {(tmp / 'scheduler.log').read_text()[-2000:]}")
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            start(
                [
                    "worker",
                    address,
                    "--host",
                    "127.0.0.1",
                    "--nworkers",
                    "1",
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--local-directory",
                    str(tmp / f"w{i}"),
                    "--death-timeout",
                    str(STARTUP_S),
                ],
                f"worker{i}",
            )
        with Client(address, timeout=STARTUP_S) as client:
            client.wait_for_workers(2, timeout=STARTUP_S)
        yield address
    finally:
        if info.exists():  # ask the scheduler to shut the cluster down, then make sure
            try:
                with Client(json.loads(info.read_text())["address"], timeout=5) as client:
                    client.shutdown()
            except Exception:
                pass
        _stop(procs[::-1])  # workers first, then the scheduler
        for log in logs:
            log.close()


def _parts(stage: Path) -> dict[str, bytes]:
    return {str(p.relative_to(stage)): p.read_bytes() for p in sorted(stage.glob("*.parquet/part-*.parquet"))}


def test_same_bytes_on_sync_local_cluster_and_cli_cluster(ingested, cli_cluster, tmp_path):
    runs = {
        "sync": preprocess(ingested, root=tmp_path / "sync", scheduler="sync", npartitions=3),
        "local": preprocess(ingested, root=tmp_path / "local", scheduler="distributed", n_workers=2, npartitions=3),
        "cli": preprocess(ingested, root=tmp_path / "cli", dask_address=cli_cluster, npartitions=3),
    }
    manifests = {name: json.loads((d / "manifest.json").read_text()) for name, d in runs.items()}
    assert manifests["local"]["dask"]["scheduler"] == "distributed-local"
    assert manifests["cli"]["dask"]["address"] == cli_cluster and manifests["cli"]["dask"]["n_workers"] == 2
    files = {name: m["files"] for name, m in manifests.items()}
    assert files["sync"] == files["local"] == files["cli"]  # same content hash and rows
    parts = {name: _parts(d) for name, d in runs.items()}
    assert parts["sync"] == parts["local"] == parts["cli"] and len(parts["sync"]) >= 2  # same bytes
    for k in ("rows_in", "rows_kept", "rows_quarantined", "quarantined_by_reason", "rows_out", "n_trajectories"):
        assert manifests["sync"][k] == manifests["local"][k] == manifests["cli"][k]
    # The default partitioning follows the cluster's size; the tables do not.
    default = json.loads(
        (preprocess(ingested, root=tmp_path / "cli2", dask_address=cli_cluster) / "manifest.json").read_text()
    )
    assert default["dask"]["npartitions"] == 2 and default["files"] == files["sync"]


def test_local_cluster_workers_start_with_the_worker_env():
    """Malloc and thread settings reach the worker processes (they must be set before start-up)."""
    from distributed import Client

    from trajfm.data.preprocess import WORKER_ENV, local_cluster

    with local_cluster(1) as cluster, Client(cluster) as client:
        seen = client.run(lambda: {k: os.environ.get(k) for k in WORKER_ENV})
        info = client.scheduler_info()
    assert list(seen.values()) == [WORKER_ENV]
    assert all(w["nthreads"] == 1 for w in info["workers"].values())
    assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
