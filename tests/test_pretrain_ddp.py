"""The streamed trainer under torchrun: 2 gloo processes, each reading its own shards inside
DistributedDataParallel, reach the loss of 1 process drawing the same global batches
(``data_ranks=2``) within 1e-3, with the same weights. Run by pytest; the same file is the
worker torchrun starts (rendezvous bound to 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pretrain_data import generated_shards

from synthetic_tracks import one_torch_thread  # noqa: F401 (autouse fixture)

MODEL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)  # dropout 0: ranks draw their own masks
# 3 nominal epochs of ceil(92 / 8) steps; 2 micro-batches of 2 windows per process per step
TRAIN = dict(
    epochs=3,
    max_steps=30,
    batch_size=8,
    lr=3e-3,
    warmup_steps=3,
    seed=0,
    device="cpu",
    checkpoint_every=7,
    grad_accum_steps=2,
)
MIX = {"ships": 0.5, "boats": 0.3, "ferries": 0.2}


def _torchrun(*args: str) -> subprocess.Popen:
    """This file under torchrun, 2 gloo processes on the loopback rendezvous the train task uses."""
    from tasks.train import launch_command

    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = launch_command([__file__, *args], nproc=2)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(shards: Path, out: Path, data_ranks=None):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig
    from trajfm.train.pretrain import pretrain_stream

    return pretrain_stream(shards, GPTConfig(**MODEL), TrainConfig(**TRAIN), out, MIX, data_ranks=data_ranks)


def test_two_gloo_processes_reach_the_loss_of_one(tmp_path):
    generated_shards(tmp_path)
    shards = tmp_path / "shards"
    proc = _torchrun(str(shards), str(tmp_path / "ddp"))
    try:
        single = run(shards, tmp_path / "single", data_ranks=2)
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    assert report["world"] == 2 and json.loads((tmp_path / "ddp" / "rank1.json").read_text())["world"] == 2
    assert [h["step"] for h in report["history"]] == [h["step"] for h in single.history] == [12, 24, 30]
    for a, b in zip(report["history"], single.history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 and abs(a["val_loss"] - b["val_loss"]) < 1e-3
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    one = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    assert len(ddp["extra"]["loaders"]) == len(one["extra"]["loaders"]) == 2  # one loader state per data rank
    # the same weights up to float rounding: summed over ranks in another order, rounding differs in
    # the last bits, and AdamW enlarges it on parameters whose gradient is ~0 (the attention's
    # key bias: softmax ignores it), so the whole weight vector is compared
    flat = lambda sd: torch.cat([v.flatten().double() for k, v in sorted(sd.items())])  # noqa: E731
    a, b = flat(ddp["model"]), flat(one["model"])
    assert float((a - b).norm() / b.norm()) < 1e-4
    # and one process drawing from its own single stream learns from other batches
    alone = run(shards, tmp_path / "alone")
    assert alone.history[0]["train_loss"] != pytest.approx(single.history[0]["train_loss"], rel=1e-4)


IN_MEMORY = dict(epochs=2, batch_size=8, lr=3e-3, warmup_steps=2, seed=0, device="cpu", checkpoint_every=0)


def in_memory_data():
    from synthetic_tracks import make_windows, stats_of

    tr = make_windows(n_tracks=10, points=70, window=32, seed=20, stride=16)
    tr = tr.subset(slice(0, 8 * (len(tr) // 8) + 1))  # the last batch of each epoch: 1 window for 2 processes
    va = make_windows(n_tracks=3, points=70, window=32, seed=21)
    return tr, va, stats_of(tr)


def test_in_memory_ddp_with_a_last_batch_smaller_than_the_group(tmp_path):
    """The last global batch has one window: rank 1 has nothing to compute but must still join
    DDP's gradient all-reduce (with zeros), or both processes wait forever."""
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig, train

    proc = _torchrun("memory", str(tmp_path / "ddp"))
    try:
        tr, va, st = in_memory_data()
        assert len(tr) % IN_MEMORY["batch_size"] == 1
        single = train(tr, va, GPTConfig(**MODEL), st, TrainConfig(**IN_MEMORY), tmp_path / "single")
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "rank0.json").read_text())
    assert [h["step"] for h in report["history"]] == [h["step"] for h in single.history]
    for a, b in zip(report["history"], single.history):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 and abs(a["val_loss"] - b["val_loss"]) < 1e-3


def _worker(shards: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if shards == "memory":
        from trajfm.model import GPTConfig
        from trajfm.train import TrainConfig, train

        tr, va, st = in_memory_data()
        res = train(tr, va, GPTConfig(**MODEL), st, TrainConfig(**IN_MEMORY), out)
    else:
        res = run(Path(shards), Path(out))
    assert not dist.is_initialized()
    rank = int(os.environ["RANK"])
    (Path(out) / f"rank{rank}.json").write_text(
        json.dumps({"world": int(os.environ["WORLD_SIZE"]), "history": res.history})
    )


if __name__ == "__main__":
    _worker(*sys.argv[1:3])
