"""A streamed pre-training process killed for real (SIGKILL, SIGTERM) mid-epoch, mid-shard,
resumes bit for bit: the loader state in ``last.pt`` gives the very next batch.

Run by pytest; the same file is the worker the test starts as a subprocess. The worker reports
each checkpoint ("CKPT <step>") and sleeps a little per step, so the signal lands while it
trains past its step-N checkpoint. Then the same call runs again here: loss curve and weights
must equal an uninterrupted run's."""

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
from pretrain_data import generated_shards

from helpers import kill_after_line, loss_curve
from synthetic_tracks import one_torch_thread  # noqa: F401 (autouse fixture)

N = 9  # steps between checkpoints; nominal epochs of ceil(92 / 8) = 12 steps: N is mid-epoch
MODEL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.1)  # dropout: the RNG must resume too
TRAIN = dict(
    epochs=100, max_steps=2 * N + 4, batch_size=8, lr=3e-3, warmup_steps=2, seed=0, device="cpu", checkpoint_every=N
)
MIX = {"ships": 0.5, "boats": 0.3, "ferries": 0.2}


def run(shards: Path, out: Path):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig
    from trajfm.train.pretrain import pretrain_stream

    return pretrain_stream(shards, GPTConfig(**MODEL), TrainConfig(**TRAIN), out, MIX)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    generated_shards(data)
    shards = data / "shards"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    killed, threads = {}, []
    for sig in (signal.SIGKILL, signal.SIGTERM):
        out = tmp_path_factory.mktemp(sig.name)
        proc = subprocess.Popen(
            [sys.executable, __file__, str(shards), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        killed[sig] = {"out": out}
        threads.append(threading.Thread(target=kill_after_line, args=(proc, f"CKPT {N}", sig, killed[sig])))
        threads[-1].start()
    uninterrupted = run(shards, tmp_path_factory.mktemp("full"))
    for t in threads:
        t.join(timeout=120)
    return shards, uninterrupted, killed


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_pretraining_resumes_bit_for_bit(sig, runs):
    shards, uninterrupted, killed = runs
    r = killed[sig]
    assert "error" not in r and "DONE" not in r["stdout"], r
    if sig == signal.SIGKILL:
        assert r["returncode"] == -signal.SIGKILL
    else:
        assert r["returncode"] == 1 and "TrainingInterrupted: SIGTERM received" in r["stderr"], r["stderr"][-2000:]
    state = torch.load(r["out"] / "last.pt", weights_only=True)["extra"]
    assert N <= state["step"] < 2 * N + 4 and state["step"] % 12  # stopped mid-epoch
    assert state["loaders"][0]["fetcher_state"]["dataset_iter_state"]["k"] == state["step"] * 8  # windows drawn so far
    resumed = run(shards, r["out"])
    assert resumed.start_step == state["step"]
    assert loss_curve(resumed.history) == loss_curve(uninterrupted.history)
    for k, v in uninterrupted.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    last_a = torch.load(r["out"] / "last.pt", weights_only=True)["model"]
    for k, v in torch.load(uninterrupted.last_checkpoint, weights_only=True)["model"].items():
        assert torch.equal(v, last_a[k]), k


def test_a_checkpoint_of_other_mixing_weights_is_not_resumed(runs, tmp_path, caplog):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig
    from trajfm.train.pretrain import pretrain_stream

    shards, uninterrupted, _ = runs
    import shutil

    shutil.copy(uninterrupted.last_checkpoint, tmp_path / "last.pt")
    res = pretrain_stream(
        shards, GPTConfig(**MODEL), TrainConfig(**{**TRAIN, "max_steps": 2}), tmp_path, {"ships": 1.0}
    )
    assert res.start_step == 0 and "starting a fresh run" in caplog.text


def _worker(shards: str, out: str) -> None:
    import trajfm.train.checkpoint as pre
    from trajfm.model.gpt import TrajGPT

    torch.set_num_threads(1)
    real_save, real_loss = pre.save_checkpoint, TrajGPT.loss

    def save_and_report(path, model, optimizer=None, extra=None):
        real_save(path, model, optimizer, extra)
        if extra and extra.get("kind") == "stream_state":
            print(f"CKPT {extra['step']}", flush=True)

    def slow_loss(self, *args, **kwargs):
        time.sleep(0.05)
        return real_loss(self, *args, **kwargs)

    pre.save_checkpoint = save_and_report
    TrajGPT.loss = slow_loss
    run(Path(shards), Path(out))
    print("DONE", flush=True)


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
