"""Data parallel under torchrun: 2 CPU processes (gloo) learn what one process learns from the
same global batches. Run by pytest; the same file is the worker torchrun starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import free_port
from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)

# dropout 0: the processes draw their own dropout masks, so only the deterministic model can be
# compared with one process parameter for parameter
MODEL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)
# 15 windows per step over 2 processes and 2 micro-batches: uneven slices (4/4/4/3), and the
# last step of each epoch is shorter still; the loss weights must make it add up anyway; every
# process keeps the same weight average (validated on it)
TRAIN = dict(epochs=2, batch_size=15, lr=3e-3, warmup_steps=2, seed=0, device="cpu", checkpoint_every=4, ema_decay=0.9)


def data():
    tr = make_windows(n_tracks=12, points=90, window=32, seed=10, stride=16)
    va = make_windows(n_tracks=4, points=90, window=32, seed=11)
    return tr, va, stats_of(tr)


def test_two_gloo_processes_match_one_process(tmp_path):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig, train

    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        __file__,
        str(tmp_path / "ddp"),
        json.dumps({**TRAIN, "grad_accum_steps": 2}),
    ]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # the one-process run meanwhile: torchrun spends most of its time starting Python and torch
        tr, va, st = data()
        single = train(tr, va, GPTConfig(**MODEL), st, TrainConfig(**TRAIN), tmp_path / "single")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    seconds = time.perf_counter() - started

    report = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    assert report["world"] == 2 and json.loads((tmp_path / "ddp" / "rank1.json").read_text())["world"] == 2
    assert (tmp_path / "ddp" / "saved-by-rank0").exists()
    assert not (tmp_path / "ddp" / "saved-by-rank1").exists()  # only rank 0 writes checkpoints
    # the same per-epoch losses (float rounding apart) and the same weights
    assert [h["step"] for h in report["history"]] == [h["step"] for h in single.history]
    for a, b in zip(report["history"], single.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert ckpt["extra"]["world_size"] == 2 and len(ckpt["extra"]["rng"]["ranks"]) == 2
    for k, v in one["model"].items():  # the training weights
        torch.testing.assert_close(ckpt["model"][k], v, rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(ckpt["extra"]["ema"], one["extra"]["ema"], strict=True):  # and their average
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    best = torch.load(tmp_path / "ddp" / "best.pt", weights_only=True)["model"]
    for k, v in single.model.state_dict().items():  # the model kept: the best epoch's average
        torch.testing.assert_close(best[k], v, rtol=1e-4, atol=1e-5, msg=k)
    print(f"torchrun with 2 processes: {seconds:.1f} s")


def _worker(out: str, train_overrides: str) -> None:
    """What each torchrun process runs: train, then report what it saw."""
    import torch.distributed as dist

    import trajfm.train as train_mod
    import trajfm.train.checkpoint as ckpt_mod
    from trajfm.model import GPTConfig

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    real_save = ckpt_mod.save_checkpoint

    def spy(path, *args, **kwargs):
        Path(out, f"saved-by-rank{rank}").touch()
        return real_save(path, *args, **kwargs)

    ckpt_mod.save_checkpoint = spy
    tr, va, st = data()
    t0 = time.perf_counter()
    res = train_mod.train(tr, va, GPTConfig(**MODEL), st, train_mod.TrainConfig(**json.loads(train_overrides)), out)
    print(f"rank {rank}: trained in {time.perf_counter() - t0:.1f} s", flush=True)
    assert not dist.is_initialized()  # train made the group, and took it down
    report = {"world": int(os.environ["WORLD_SIZE"]), "history": res.history}
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
