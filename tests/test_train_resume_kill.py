"""A training process killed for real (SIGTERM, SIGKILL) resumes bit for bit.

Run by pytest; the same file is the worker the test starts as a subprocess. The worker reports
each checkpoint on stdout ("CKPT <step>") and sleeps a little per step, so the signal lands while
it trains past its step-N checkpoint. Then ``train`` is called again with the same arguments, in
this process: the loss curve and the weights must equal those of an uninterrupted 2N-step run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from helpers import kill_after_line, loss_curve
from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)

N = 7  # steps between checkpoints; the run makes 2N (mid-epoch: 3 steps per epoch)
MODEL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.1)  # dropout: the RNG must resume too
TRAIN = dict(
    epochs=100, max_steps=2 * N, batch_size=8, lr=3e-3, warmup_steps=2, seed=0, device="cpu", checkpoint_every=N
)


def data():
    tr = make_windows(n_tracks=12, points=60, window=32, seed=10, stride=16)
    va = make_windows(n_tracks=3, points=60, window=32, seed=11)
    return tr, va, stats_of(tr)


def run(out: Path, **kw):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig, train

    tr, va, st = data()
    return train(tr, va, GPTConfig(**MODEL), st, TrainConfig(**{**TRAIN, **kw}), out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run here while both workers run (and are killed) at once: each spends
    most of its time starting Python and torch."""
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    runs, threads = {}, []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = tmp_path_factory.mktemp(sig.name)
        proc = subprocess.Popen(
            [sys.executable, __file__, str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        runs[sig] = {"out": out}
        threads.append(threading.Thread(target=kill_after_line, args=(proc, f"CKPT {N}", sig, runs[sig])))
        threads[-1].start()
    uninterrupted = run(tmp_path_factory.mktemp("full"))
    for t in threads:
        t.join(timeout=120)
    return uninterrupted, runs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_process_resumes_bit_for_bit(sig, runs):
    uninterrupted, killed = runs
    steps_per_epoch = -(-len(data()[0]) // TRAIN["batch_size"])
    assert N % steps_per_epoch and uninterrupted.history[-1]["step"] == 2 * N  # checkpoints mid-epoch
    r = killed[sig]
    assert "error" not in r and "DONE" not in r["stdout"], r
    if sig == signal.SIGKILL:
        assert r["returncode"] == -signal.SIGKILL
    else:  # it finished its step, checkpointed, and said so
        assert r["returncode"] == 1, r["stderr"][-2000:]
        assert "TrainingInterrupted: SIGTERM received: training stopped after step" in r["stderr"]
        saved = [int(line.split()[1]) for line in r["stdout"].splitlines() if line.startswith("CKPT")]
        assert saved and N < saved[-1] < 2 * N  # a checkpoint of its own, past the periodic one

    out = r["out"]
    state = torch.load(out / "last.pt", weights_only=True)["extra"]
    assert N <= state["step"] < 2 * N
    resumed = run(out)
    assert loss_curve(resumed.history) == loss_curve(uninterrupted.history)
    for k, v in uninterrupted.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def _worker(out: str) -> None:
    import trajfm.train.checkpoint as train_mod
    from trajfm.model.gpt import TrajGPT

    torch.set_num_threads(1)
    real_save, real_loss = train_mod.save_checkpoint, TrajGPT.loss

    def save_and_report(path, model, optimizer=None, extra=None):
        real_save(path, model, optimizer, extra)
        if extra and extra.get("kind") == "train_state":
            print(f"CKPT {extra['step']}", flush=True)

    def slow_loss(self, *args, **kwargs):  # time for the signal to arrive mid-run
        time.sleep(0.05)
        return real_loss(self, *args, **kwargs)

    train_mod.save_checkpoint = save_and_report
    TrajGPT.loss = slow_loss
    run(Path(out))
    print("DONE", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1])
