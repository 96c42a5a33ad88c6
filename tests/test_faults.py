"""Faults the Prefect layer survives, for real:

1. the training process is SIGKILLed mid-run: the train task fails, Prefect retries it, the retry
   resumes from the last checkpoint and ends with the numbers of an uninterrupted run;
2. a source that fails on its first read is retried and ingested; one that always fails fails
   the flow with a message naming it, and leaves no partial stage directory;
3. two pipeline runs at once (two processes) on one data root both complete, with identical,
   complete stage outputs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from trajfm.data.catalog import SMALL_SLICE, embedded_files
from trajfm.store import read_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = [str(p) for p in embedded_files(SMALL_SLICE)]


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def incomplete_stage_dirs(root: Path) -> list[Path]:
    """Directories under ``<root>/<stage>/`` that are not complete stages (no manifest)."""
    return [
        d
        for stage in root.iterdir()
        if stage.is_dir() and stage.name in ("ingest", "preprocess", "features", "train", "evaluate")
        for d in stage.iterdir()
        if not (d / "manifest.json").is_file()
    ]


# --- 1. SIGKILL of the training process --------------------------------------------------------

MODEL = {"n_layer": 1, "n_head": 2, "d_model": 32, "dropout": 0.1}  # dropout: the RNG must resume too
TRAIN = {"epochs": 2, "batch_size": 16, "warmup_steps": 4, "checkpoint_every": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory) -> str:
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess
    from trajfm.features.windows import make_features

    root = tmp_path_factory.mktemp("features-root")
    return str(make_features(preprocess(ingest(SMALL, root), root, scheduler="sync"), root))


def _kill_training_once(pattern: str, result: dict, stop: threading.Event) -> None:
    """SIGKILL the first child process running ``trajfm.train`` once its ``last.pt`` exists."""
    import psutil

    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                if "trajfm.train" in " ".join(child.cmdline()) and list(Path(pattern).glob("checkpoints/*/last.pt")):
                    child.send_signal(signal.SIGKILL)
                    result["killed_pid"] = child.pid
                    return
            except psutil.Error:
                continue
        time.sleep(0.02)


def _progress_artifacts() -> dict:
    """The progress artifacts on the API: id -> (created, percent)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])))
    return {a.id: (a.created, float(a.data)) for a in found}


def test_sigkilled_training_is_retried_and_resumes_to_the_same_result(prefect_api, features_dir, tmp_path):
    import torch
    from prefect import flow

    from tasks.train import train_task

    quick_retry = train_task.with_options(retry_delay_seconds=0)

    @flow
    def train_once(root: str) -> str:
        return quick_retry(
            features_dir, data_root=root, preset="tutorial", model_overrides=MODEL, train_overrides=TRAIN
        )

    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    before = _progress_artifacts()
    result, stop = {}, threading.Event()
    killer = threading.Thread(target=_kill_training_once, args=(str(killed_root), result, stop), daemon=True)
    killer.start()
    try:
        killed = Path(train_once(str(killed_root)))
    finally:
        stop.set()
        killer.join(timeout=5)
    assert "killed_pid" in result, "the training process finished before it could be killed"
    m = read_manifest(killed)
    assert m["resumed_from_step"] > 0  # the retry continued from last.pt, it did not start over
    progress = sorted(v for k, v in _progress_artifacts().items() if k not in before)
    assert len(progress) == 2 and progress[0][1] < 100.0 == progress[1][1]  # the killed attempt stopped part way

    clean = Path(train_once(str(clean_root)))
    c = read_manifest(clean)
    assert c["resumed_from_step"] == 0 and c["key"] == m["key"]
    for k in ("epoch", "step", "train_loss", "val_loss", "best_val_loss"):
        assert m["final"][k] == c["final"][k], k  # bit for bit
    a = torch.load(killed / "model.pt", weights_only=True)["model"]
    b = torch.load(clean / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_train_task_runs_data_parallel_under_torchrun_when_nproc_is_2(prefect_api, features_dir, tmp_path):
    """The task's torchrun launch (2 CPU processes, gloo) learns what one process learns."""
    from prefect import flow

    from tasks.train import train_task, training_command

    cmd = training_command(features_dir, "/r", "tutorial", {}, {}, nproc=2)
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert training_command(features_dir, None, "tutorial", {}, {})[1:3] == ["-m", "trajfm.train"]
    with pytest.raises(ValueError, match="nproc"):
        training_command(features_dir, None, "tutorial", {}, {}, nproc=0)

    small = {**MODEL, "dropout": 0.0}  # dropout masks differ between ranks by design
    steps = {"epochs": 1, "max_steps": 3, "batch_size": 16, "warmup_steps": 1, "device": "cpu"}

    @flow
    def train_with(root: str, nproc: int) -> str:
        return train_task(
            features_dir, data_root=root, preset="tutorial", model_overrides=small, train_overrides=steps, nproc=nproc
        )

    two = read_manifest(train_with(str(tmp_path / "two"), 2))
    one = read_manifest(train_with(str(tmp_path / "one"), 1))
    assert (two["world_size"], one["world_size"]) == (2, 1) and two["key"] == one["key"]
    assert two["final"]["train_loss"] == pytest.approx(one["final"]["train_loss"], rel=1e-4)
    assert two["final"]["val_loss"] == pytest.approx(one["final"]["val_loss"], rel=1e-4)


# --- 2. flaky and dead sources --------------------------------------------------------------------


def _reader_failing(times: int, calls: list):
    """The tracktable reader, raising an I/O error on its first ``times`` reads."""
    from trajfm.data.readers import READERS

    real = READERS["tracktable"]

    def iter_chunks(source, *args, **kwargs):
        calls.append(str(source))
        if len(calls) <= times:
            raise ConnectionResetError(f"connection reset while reading {source}")
        yield from real.iter_chunks(source, *args, **kwargs)

    return dataclasses.replace(real, iter_chunks=iter_chunks)


@pytest.mark.parametrize("failures", [1, 99])
def test_source_failing_once_is_retried_and_one_always_failing_fails_cleanly(
    prefect_api, tmp_path, monkeypatch, failures
):
    import flows.ingest
    from trajfm.data.readers import READERS

    calls: list = []
    monkeypatch.setitem(READERS, "tracktable", _reader_failing(failures, calls))
    monkeypatch.setattr(flows.ingest, "ingest_task", flows.ingest.ingest_task.with_options(retry_delay_seconds=0))
    root = tmp_path / "root"
    state = flows.ingest.ingest_flow(sources=SMALL, data_root=str(root), return_state=True)
    if failures == 1:
        assert state.is_completed()
        out = state.result()
        assert read_manifest(out)["rows_read"] == 9091 and len(calls) == 2  # failed once, then read it all
    else:
        assert state.is_failed() and len(calls) == 3  # the first attempt and the task's 2 retries
        message = str(state.message) + repr(state.result(raise_on_failure=False))
        assert SMALL_SLICE in message and "ConnectionResetError" in message
        assert incomplete_stage_dirs(root) == []  # no half-written stage, no leftover temporary dir
        assert not (root / "ingest").exists() or not any((root / "ingest").iterdir())


# --- 3. two pipeline runs at once -----------------------------------------------------------------

RUN = """
import json, sys
from flows.pipeline import pipeline
r = pipeline(sources=json.loads(sys.argv[1]), data_root=sys.argv[2], preset="tutorial", epochs=1, batch_size=64,
             n_workers=1,
             train_overrides={"warmup_steps": 2, "max_steps": 6}, context_len=12, horizon=6)
print("RESULT " + json.dumps(r, default=str))
"""


def test_two_pipelines_at_once_on_one_data_root_both_complete_consistently(prefect_api, tmp_path):
    import pandas as pd
    import torch
    from prefect.settings import PREFECT_API_URL

    from trajfm.registry.tracking import champion_info
    from trajfm.store import frame_hash

    root = tmp_path / "root"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN, json.dumps(SMALL), str(root)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=400)
            assert p.returncode == 0, err[-3000:]
            outputs.append(
                json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :])
            )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    a, b = outputs
    for key in ("ingest_dir", "preprocess_dir", "features_dir", "train_dir"):
        assert a[key] == b[key], key  # same inputs and config -> the same stage directory
    for key in ("ingest_dir", "preprocess_dir"):  # the tables are those their manifests describe
        m = read_manifest(a[key])
        for name, f in m["files"].items():
            df = pd.read_parquet(Path(a[key]) / f"{name}.parquet")
            assert (len(df), frame_hash(df)) == (f["rows"], f["hash"]), (key, name)
    features = read_manifest(a["features_dir"])
    assert features["upstream"] == a["preprocess_dir"]
    history = json.loads((Path(a["train_dir"]) / "history.json").read_text())
    assert read_manifest(a["train_dir"])["final"]["train_loss"] == history[-1]["train_loss"]
    torch.load(Path(a["train_dir"]) / "model.pt", weights_only=True)  # a whole checkpoint
    assert a["metrics"] == b["metrics"]
    assert incomplete_stage_dirs(root) == []
    hidden = [p for stage in ("ingest", "preprocess", "features", "train") for p in (root / stage).glob(".*")]
    assert hidden == []  # the loser's temporary directory was removed, not left beside the winner's
    assert champion_info(root) is not None  # and the registry holds a champion
