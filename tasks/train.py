"""Prefect task over ``trajfm.train``: train a preset in a child process; a retry resumes.

Training runs as ``python -m trajfm.train`` (``torchrun --nproc_per_node N -m trajfm.train`` when
``nproc > 1``), not inside the task's process: a crash of the training process (out of memory,
SIGKILL, a lost GPU) is then an ordinary task failure that Prefect retries, and the retry resumes
from ``<root>/checkpoints/<key>/last.pt`` because the stage key is the same. The child reports
progress on stdout (``--report-progress``), which this task turns into a Prefect progress
artifact and log lines; its stderr (training logs) goes to the task's log. If the task itself is
stopped (cancelled, SIGTERM), the child gets SIGTERM, checkpoints and exits.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks._common import STAGE_TASK
from trajfm.params import DEFAULT_PRESET
from trajfm.progress import progress_bar
from trajfm.store import read_manifest
from trajfm.train.stage import CONFIG_ERROR_EXIT, EPOCH_PREFIX, PROGRESS_PREFIX

# What measures the validation forecast error when ``select_by`` is "fde" (the child resolves it;
# the training layer sits below ``trajfm.evaluate`` and does not import it).
FORECAST_EVALUATOR = "trajfm.evaluate.forecast:evaluate_forecast"

STOP_GRACE_S = 60  # after SIGTERM, the child finishes its step and writes last.pt


def training_command(
    features_dir: str,
    data_root: str | None,
    preset: str,
    model_overrides: dict,
    train_overrides: dict,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
) -> list[str]:
    """The child's command line: one process, or torchrun with ``nproc`` processes per node.

    ``torchrun_args`` replace the single-node loopback rendezvous (``single_node_launcher``) for
    multi-node runs, e.g. ``["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
    "head:29400", "--rdzv-id", "trajfm"]``. With ``select_by`` "fde" the child is told which
    forecast evaluator measures the validation error (``FORECAST_EVALUATOR``)."""
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    args = [
        "-m",
        "trajfm.train",
        "--features-dir",
        str(features_dir),
        "--preset",
        preset,
        "--model",
        json.dumps(model_overrides),
        "--train",
        json.dumps(train_overrides),
        "--report-progress",
    ]
    if data_root:
        args += ["--root", str(data_root)]
    if train_overrides.get("select_by") == "fde":
        args += ["--forecast-evaluator", FORECAST_EVALUATOR]
    return launch_command(args, nproc, torchrun_args)


def launch_command(args: list[str], nproc: int = 1, torchrun_args: list[str] | None = None) -> list[str]:
    """``python ARGS`` for one process, else torchrun with ``nproc`` processes per node: on the
    loopback rendezvous of ``single_node_launcher``, or with ``torchrun_args`` for several nodes."""
    if nproc == 1 and not torchrun_args:
        return [sys.executable, *args]
    launcher = list(torchrun_args) if torchrun_args else single_node_launcher()
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "--nproc_per_node", str(nproc), *args]


def single_node_launcher() -> list[str]:
    """torchrun arguments for one node with its rendezvous on loopback: ``--standalone`` lets
    torchrun's rendezvous store listen on every interface; a c10d rendezvous at
    ``127.0.0.1:<free port>`` keeps it on this host."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        "--nnodes",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        f"trajfm-{os.getpid()}",
    ]


@task(name="train", **STAGE_TASK)
def train_task(
    features_dir: str,
    data_root: str | None = None,
    preset: str = DEFAULT_PRESET,
    model_overrides: dict | None = None,
    train_overrides: dict | None = None,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
) -> str:
    """Train ``preset`` on the features; a retry resumes from the last checkpoint of the same run."""
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, key="train-progress", description=f"training {preset}")
    cmd = training_command(
        features_dir, data_root, preset, model_overrides or {}, train_overrides or {}, nproc, torchrun_args
    )
    logger.info("train: %s", " ".join(cmd))
    out = supervise(cmd, progress, logger)
    update_progress_artifact(progress, 100.0)
    manifest = read_manifest(out)
    logger.info("train: %s (resumed from step %s)", manifest.get("final", {}), manifest.get("resumed_from_step"))
    return str(out)


def supervise(cmd: list[str], progress, logger) -> Path:
    """Run the training child to the end; return the stage directory it printed. Raises
    ``RuntimeError`` (naming the exit code or signal, with the end of its log) if it fails.

    Each epoch is logged once, from the child's epoch line on stdout (its own log line of the
    epoch is kept out of the task log); on a terminal a progress bar follows its steps."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1, env=os.environ.copy()
    )
    tail: deque[str] = deque(maxlen=40)
    relay = threading.Thread(target=_relay_stderr, args=(proc, tail, logger), daemon=True)
    relay.start()
    last_line = ""
    bar = None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                p = json.loads(line[len(PROGRESS_PREFIX) :])
                update_progress_artifact(progress, 100.0 * p["step"] / max(p["total"], 1))
                bar = bar or progress_bar(p["total"], "train", unit="step")
                bar.update(p["step"] - bar.n)
            elif line.startswith(EPOCH_PREFIX):
                r = json.loads(line[len(EPOCH_PREFIX) :])
                logger.info(
                    "epoch %s: train_loss %.4f val_loss %s",
                    r.get("epoch"),
                    r.get("train_loss", float("nan")),
                    r.get("val_loss"),
                )
            elif line.strip():
                last_line = line.strip()
        proc.wait()
    finally:
        if bar is not None:
            bar.close()
        if proc.poll() is None:  # the task is being stopped: let the child checkpoint first
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        relay.join(timeout=5)
    if proc.returncode == CONFIG_ERROR_EXIT:  # the child refused its configuration: not retried
        refused = next((line for line in reversed(tail) if "error:" in line), tail[-1] if tail else "")
        raise ValueError(f"training refused its configuration: {refused}")
    if proc.returncode != 0:
        how = (
            f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        )
        raise RuntimeError(
            f"training process failed ({how}); a retry resumes from its last checkpoint. Its last log lines:\n"
            + "\n".join(tail)
        )
    out = Path(last_line)
    if not (out / "manifest.json").is_file():
        raise RuntimeError(f"training process ended without a train stage (last line {last_line!r})")
    return out


# The child's own log line of an epoch ("... INFO trajfm.train: epoch 2 step 40 train ..."): the
# epoch line on stdout carries the same record, and is the one logged.
CHILD_EPOCH_LOG = re.compile(r" INFO \S+: epoch \d+ step \d+ ")


def _relay_stderr(proc: subprocess.Popen, tail: deque, logger) -> None:
    for line in proc.stderr:
        line = line.rstrip("\n")
        tail.append(line)
        if CHILD_EPOCH_LOG.search(line):
            continue
        if " INFO " in line or " WARNING " in line or " ERROR " in line:
            logger.info("%s", line)
