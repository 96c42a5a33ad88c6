"""Training: it learns, it is deterministic, and it resumes exactly after a crash."""

from __future__ import annotations

import logging

import pytest
import torch

import trajfm.train as train_mod
from synthetic_tracks import one_torch_thread  # noqa: F401 (autouse fixture)
from synthetic_tracks import make_windows, stats_of
from trajfm.model import GPTConfig, TrajGPT, load_model, load_preset
from trajfm.train import TrainConfig, evaluate_loss, lr_factor, train

# dropout on, so resuming must also restore the RNG that draws the dropout masks
MODEL = GPTConfig(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.1)


@pytest.fixture(scope="module")
def data():
    tr = make_windows(n_tracks=24, points=90, window=32, seed=10, stride=16)
    va = make_windows(n_tracks=6, points=90, window=32, seed=11)
    return tr, va, stats_of(tr)


def cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=3e-3, warmup_steps=3, seed=0, device="cpu", checkpoint_every=1000)
    base.update(kw)
    return TrainConfig(**base)


def losses(history):
    return [(h["epoch"], h["step"], h["train_loss"], h["val_loss"]) for h in history]


def test_lr_schedule_warms_up_then_decays():
    f = [lr_factor(s, warmup_steps=10, total_steps=100, min_lr_ratio=0.1) for s in range(100)]
    assert f[0] < f[5] < f[9] < 1.0
    assert max(f) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.1, abs=1e-3)


def test_training_lowers_the_loss(data, tmp_path):
    tr, va, st = data
    model_cfg = load_preset("tutorial", block_size=32, dropout=0.0)
    torch.manual_seed(0)
    untrained = TrajGPT(model_cfg)
    untrained.set_normalization(st["mean"], st["std"])
    vx, vm = torch.from_numpy(va.x), torch.from_numpy(va.mask)
    before = evaluate_loss(untrained, vx, vm, 64, torch.device("cpu"))
    res = train(tr, va, model_cfg, st, cfg(epochs=6), tmp_path)
    after = res.history[-1]["val_loss"]
    assert after < 0.5 * before, (before, after)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert all(h["points_per_s"] > 0 for h in res.history)
    # the returned model is the best checkpoint, and it loads with weights_only=True
    assert res.checkpoint == tmp_path / "best.pt"
    best_val = min(h["val_loss"] for h in res.history)
    assert evaluate_loss(load_model(res.checkpoint), vx, vm, 64, torch.device("cpu")) == pytest.approx(best_val, rel=1e-5)
    assert evaluate_loss(res.model, vx, vm, 64, torch.device("cpu")) == pytest.approx(best_val, rel=1e-5)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["extra"]["step"] == res.history[-1]["step"]


def test_same_seed_same_losses_other_seed_other_losses(data, tmp_path):
    tr, va, st = data
    a = train(tr, va, MODEL, st, cfg(epochs=2), tmp_path / "a")
    b = train(tr, va, MODEL, st, cfg(epochs=2), tmp_path / "b")
    c = train(tr, va, MODEL, st, cfg(epochs=2, seed=1), tmp_path / "c")
    assert losses(a.history) == losses(b.history)
    assert losses(a.history) != losses(c.history)


class Crash(RuntimeError):
    pass


def test_resume_after_crash_at_epoch_end_matches_uninterrupted(data, tmp_path):
    tr, va, st = data
    full = train(tr, va, MODEL, st, cfg(), tmp_path / "full")

    def crash_after_first_epoch(record):
        if record["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        train(tr, va, MODEL, st, cfg(), tmp_path / "run", on_epoch=crash_after_first_epoch)
    seen = []
    resumed = train(tr, va, MODEL, st, cfg(), tmp_path / "run", on_epoch=seen.append)
    assert [r["epoch"] for r in seen] == [2, 3]  # epoch 1 was not trained again
    assert losses(resumed.history) == losses(full.history)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_resume_mid_epoch_matches_uninterrupted(data, tmp_path, monkeypatch):
    tr, va, st = data
    steps_per_epoch = -(-len(tr) // 16)
    n = steps_per_epoch + steps_per_epoch // 2  # in the middle of epoch 2
    config = cfg(max_steps=2 * n, epochs=10, checkpoint_every=n)
    full = train(tr, va, MODEL, st, config, tmp_path / "full")
    assert full.history[-1]["step"] == 2 * n

    real_save = train_mod.save_checkpoint

    def save_then_crash(path, model, optimizer=None, extra=None):
        real_save(path, model, optimizer, extra)
        if extra and extra.get("kind") == "train_state" and extra["step"] == n:
            raise Crash

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(tr, va, MODEL, st, config, tmp_path / "run")
    monkeypatch.setattr(train_mod, "save_checkpoint", real_save)
    resumed = train(tr, va, MODEL, st, config, tmp_path / "run")
    assert losses(resumed.history) == losses(full.history)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_finished_run_returns_without_training(data, tmp_path):
    tr, va, st = data
    first = train(tr, None, MODEL, st, cfg(epochs=1), tmp_path)
    assert first.checkpoint == tmp_path / "last.pt"
    seen = []
    again = train(tr, None, MODEL, st, cfg(epochs=1, checkpoint_every=7), tmp_path, on_epoch=seen.append)
    assert seen == []
    assert losses(again.history) == losses(first.history)


def test_other_config_starts_fresh(data, tmp_path, caplog):
    tr, va, st = data
    train(tr, None, MODEL, st, cfg(epochs=1, lr=1e-3), tmp_path)
    with caplog.at_level(logging.WARNING, logger="trajfm.train"):
        other = train(tr, None, MODEL, st, cfg(epochs=1), tmp_path)
    assert "starting a fresh run" in caplog.text
    clean = train(tr, None, MODEL, st, cfg(epochs=1), tmp_path / "clean")
    assert losses(other.history) == losses(clean.history)


def test_long_windows_are_truncated_to_block_size(data, tmp_path):
    tr, _, st = data
    short = GPTConfig(n_layer=1, n_head=2, d_model=16, block_size=12, dropout=0.0)
    res = train(tr, None, short, st, cfg(epochs=1, max_steps=3), tmp_path)
    assert [h["step"] for h in res.history] == [3]
    assert res.model.config.block_size == 12


def test_run_training_stage_writes_model_and_is_cached(data, tmp_path):
    from trajfm.model.checkpoint import load_checkpoint
    from trajfm.store import StageWriter, read_manifest
    from trajfm.train import run_training

    tr, va, st = data
    with StageWriter(tmp_path, "features", "fixture") as w:  # a features stage, as make_features writes it
        for split, ws in {"train": tr, "val": va, "test": va}.items():
            ws.save(w.path / f"{split}.npz")
        w.write_json("stats", st)
    features_dir = tmp_path / "features" / "fixture"
    fractions = []
    overrides = dict(epochs=2, batch_size=16, warmup_steps=2, device="cpu")
    out = run_training(
        features_dir, root=tmp_path, preset="tutorial", model_overrides={"block_size": 32, "d_model": 32},
        train_overrides=overrides, on_epoch=lambda record, fraction: fractions.append(fraction),
    )
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and len(fractions) == 2
    manifest = read_manifest(out)
    assert manifest["preset"] == "tutorial" and manifest["final"]["epoch"] == 2
    assert manifest["final"]["best_val_loss"] <= manifest["final"]["val_loss"]
    model = load_model(out / "model.pt")
    assert model.config.d_model == 32
    assert load_checkpoint(out / "model.pt")["extra"]["preset"] == "tutorial"
    again = run_training(
        features_dir, root=tmp_path, preset="tutorial", model_overrides={"block_size": 32, "d_model": 32},
        train_overrides=overrides, on_epoch=lambda record, fraction: fractions.append(fraction),
    )
    assert again == out and len(fractions) == 2  # finished stage: returned without training
