"""Training: it learns, it is deterministic, and it resumes exactly after a crash."""

from __future__ import annotations

import logging

import pytest
import torch

import trajfm.train as train_mod
import trajfm.train.checkpoint as ckpt_mod
from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)
from trajfm.evaluate.forecast import evaluate_forecast
from trajfm.model import GPTConfig, TrajGPT, load_model, load_preset
from trajfm.train import TrainConfig, evaluate_loss, lr_factor, train
from trajfm.train.config import RESUME_IGNORES
from trajfm.train.memory import window_tensors

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
    assert evaluate_loss(load_model(res.checkpoint), vx, vm, 64, torch.device("cpu")) == pytest.approx(
        best_val, rel=1e-5
    )
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


@pytest.mark.parametrize(
    "ema_decay,select_by", [(0.0, "loss"), (0.9, "fde")]
)  # the average and the kept epoch resume too
def test_resume_mid_epoch_matches_uninterrupted(data, tmp_path, monkeypatch, ema_decay, select_by):
    tr, va, st = data
    steps_per_epoch = -(-len(tr) // 16)
    n = steps_per_epoch + steps_per_epoch // 2  # in the middle of epoch 2
    config = cfg(
        max_steps=2 * n,
        epochs=10,
        checkpoint_every=n,
        ema_decay=ema_decay,
        select_by=select_by,
        select_context=20,
        select_horizon=5,
    )
    full = train(tr, va, MODEL, st, config, tmp_path / "full", forecast_evaluator=evaluate_forecast)
    assert full.history[-1]["step"] == 2 * n

    real_save = ckpt_mod.save_checkpoint

    def save_then_crash(path, model, optimizer=None, extra=None):
        real_save(path, model, optimizer, extra)
        if extra and extra.get("kind") == "train_state" and extra["step"] == n:
            raise Crash

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save_then_crash)
    with pytest.raises(Crash):
        train(tr, va, MODEL, st, config, tmp_path / "run", forecast_evaluator=evaluate_forecast)
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", real_save)
    resumed = train(tr, va, MODEL, st, config, tmp_path / "run", forecast_evaluator=evaluate_forecast)
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
        features_dir,
        root=tmp_path,
        preset="tutorial",
        model_overrides={"block_size": 32, "d_model": 32},
        train_overrides=overrides,
        on_epoch=lambda record, fraction: fractions.append(fraction),
    )
    assert fractions[-1] == 1.0 and fractions == sorted(fractions) and len(fractions) == 2
    manifest = read_manifest(out)
    assert manifest["preset"] == "tutorial" and manifest["final"]["epoch"] == 2
    assert manifest["final"]["best_val_loss"] <= manifest["final"]["val_loss"]
    model = load_model(out / "model.pt")
    assert model.config.d_model == 32
    assert load_checkpoint(out / "model.pt")["extra"]["preset"] == "tutorial"
    again = run_training(
        features_dir,
        root=tmp_path,
        preset="tutorial",
        model_overrides={"block_size": 32, "d_model": 32},
        train_overrides=overrides,
        on_epoch=lambda record, fraction: fractions.append(fraction),
    )
    assert again == out and len(fractions) == 2  # finished stage: returned without training
    quiet = run_training(  # settings that change no number do not change the stage
        features_dir,
        root=tmp_path,
        preset="tutorial",
        model_overrides={"block_size": 32, "d_model": 32},
        train_overrides={**overrides, "log_every": 7, "progress": False},
        on_epoch=lambda record, fraction: fractions.append(fraction),
    )
    assert quiet == out and len(fractions) == 2


# --- gradient accumulation, SIGTERM, MLflow, autocast, compatibility --------------------------

NO_DROPOUT = GPTConfig(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)


def test_gradient_accumulation_learns_what_one_batch_learns(data, tmp_path):
    tr, va, st = data
    one = train(tr, va, NO_DROPOUT, st, cfg(epochs=2, batch_size=13), tmp_path / "one")
    acc = train(tr, va, NO_DROPOUT, st, cfg(epochs=2, batch_size=13, grad_accum_steps=3), tmp_path / "acc")
    for a, b in zip(one.history, acc.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(
            acc.model.state_dict()[k], v, rtol=1e-4, atol=2e-5, msg=k
        )  # Adam magnifies rounding in ~0 gradients (key biases)


@pytest.mark.parametrize("patch_in,patch_out", [(1, 1), (4, 8), (2, 3)])
def test_target_count_is_what_the_loss_averages_over(patch_in, patch_out):
    from trajfm.model.patching import next_points, pad_to_patches

    mask = torch.zeros(5, 30, dtype=torch.bool)
    for row, n in enumerate([30, 1, 7, 12, 29]):
        mask[row, :n] = True
    m = pad_to_patches(mask, patch_in)
    _, valid = next_points(torch.zeros(*m.shape, 3), m, patch_in, patch_out)
    assert train_mod.target_count(mask, patch_in, patch_out) == int(valid.sum())
    assert train_mod.target_count(mask) == int((mask[:, :-1] & mask[:, 1:]).sum())


def test_sigterm_checkpoints_raises_and_resumes(data, tmp_path):
    import os
    import signal

    tr, va, st = data
    full = train(tr, va, MODEL, st, cfg(), tmp_path / "full")
    sentinel = lambda signum, frame: None  # noqa: E731
    previous = signal.signal(signal.SIGTERM, sentinel)
    try:

        def terminate_in_epoch_2(record):
            if record["epoch"] == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # handled at the end of the next step

        with pytest.raises(
            train_mod.TrainingInterrupted, match="SIGTERM received: training stopped after step"
        ) as info:
            train(tr, va, MODEL, st, cfg(), tmp_path / "run", on_epoch=terminate_in_epoch_2)
        assert signal.getsignal(signal.SIGTERM) is sentinel  # the caller's handler is back
    finally:
        signal.signal(signal.SIGTERM, previous)
    steps_per_epoch = -(-len(tr) // 16)
    assert info.value.step == steps_per_epoch + 1 and info.value.checkpoint == tmp_path / "run" / "last.pt"
    assert torch.load(info.value.checkpoint, weights_only=True)["extra"]["step"] == info.value.step
    resumed = train(tr, va, MODEL, st, cfg(), tmp_path / "run")
    assert losses(resumed.history) == losses(full.history)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


class FakeMlflow:
    def __init__(self, active: bool):
        self.active, self.logged = active, []

    def active_run(self):
        return object() if self.active else None

    def log_metrics(self, metrics, step=None):
        self.logged.append((step, dict(metrics)))


@pytest.mark.parametrize("active", [True, False])
def test_metrics_go_to_an_active_mlflow_run_only(data, tmp_path, monkeypatch, active):
    import sys

    tr, va, st = data
    fake = FakeMlflow(active)
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    res = train(tr, va, MODEL, st, cfg(epochs=2, log_every=2), tmp_path)
    if not active:
        assert fake.logged == []
        return
    steps = res.history[-1]["step"]
    step_logs = [(s, m) for s, m in fake.logged if "train/step_loss" in m]
    assert [s for s, _ in step_logs] == list(range(2, steps + 1, 2))
    epoch_logs = [(s, m) for s, m in fake.logged if "val/loss" in m]
    assert [s for s, _ in epoch_logs] == [h["step"] for h in res.history]
    assert [m["val/loss"] for _, m in epoch_logs] == [h["val_loss"] for h in res.history]


def test_mlflow_is_never_imported_by_training(data, tmp_path, monkeypatch):
    import sys

    tr, _, st = data
    monkeypatch.delitem(sys.modules, "mlflow", raising=False)
    train(tr, None, MODEL, st, cfg(epochs=1, max_steps=2, log_every=1), tmp_path)
    assert "mlflow" not in sys.modules


def test_bf16_autocast_on_cpu_when_asked(data, tmp_path):
    tr, va, st = data
    assert train_mod.autocast_dtype("auto", torch.device("cpu")) is None  # CPU default: float32
    assert train_mod.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    res = train(tr, va, NO_DROPOUT, st, cfg(epochs=1, amp="bf16"), tmp_path)
    plain = train(tr, va, NO_DROPOUT, st, cfg(epochs=1), tmp_path / "plain")
    assert res.history[0]["train_loss"] == pytest.approx(plain.history[0]["train_loss"], rel=0.05)
    assert res.history[0]["train_loss"] != plain.history[0]["train_loss"]  # it did run in bf16
    with pytest.raises(ValueError, match="amp must be one of"):
        TrainConfig(amp="fp8")


def test_config_identity_is_every_setting_that_changes_the_numbers():
    """Resume identities and stage keys hold every setting but those that change nothing in the
    numbers, defaults included (the stage key's version, ``STAGE_KEY_VERSION``, marks the change)."""
    from dataclasses import fields

    ident = train_mod.config_identity(TrainConfig())
    assert set(ident) == {f.name for f in fields(TrainConfig)} - set(RESUME_IGNORES)
    assert train_mod.STAGE_KEY_VERSION == 2
    assert train_mod.config_identity(TrainConfig(grad_accum_steps=2))["grad_accum_steps"] == 2
    assert train_mod.config_identity(TrainConfig(ema_decay=0.99))["ema_decay"] == 0.99
    assert train_mod.config_identity(TrainConfig(log_every=3, progress=False, checkpoint_every=9)) == ident


@pytest.mark.slow
def test_torch_compile_trains_like_eager(data, tmp_path):
    tr, va, st = data
    eager = train(tr, va, NO_DROPOUT, st, cfg(epochs=1, max_steps=3), tmp_path / "eager")
    compiled = train(tr, va, NO_DROPOUT, st, cfg(epochs=1, max_steps=3, compile=True), tmp_path / "compiled")
    assert compiled.history[0]["train_loss"] == pytest.approx(eager.history[0]["train_loss"], rel=1e-4)


def test_weight_average_follows_its_recursion_and_swaps_back():
    torch.manual_seed(0)
    model = TrajGPT(MODEL)
    avg = train_mod.WeightAverage(model, decay=0.5)
    p = avg.params[0]
    expected = p.detach().clone()
    for step in (1, 2, 3, 30):
        with torch.no_grad():
            p.add_(1.0)
        avg.update(step)
        d = min(0.5, (1 + step) / (10 + step))  # warm-up: 0.18, 0.25, 0.31, then the cap
        expected = d * expected + (1 - d) * p.detach()
        assert torch.allclose(avg.avg[0], expected)
    training = {k: v.clone() for k, v in model.state_dict().items()}
    with avg.swapped():
        assert torch.equal(p, avg.avg[0]) and not torch.equal(
            p, training[next(n for n, q in model.named_parameters() if q is p)]
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, training[k]), k  # the training weights are back, bit for bit
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_ema_validates_keeps_and_returns_the_average(data, tmp_path):
    """With ``ema_decay`` the best epoch is judged on the average and best.pt holds it; the
    training weights (last.pt) go on without it. Without validation data, average.pt is the result."""
    tr, va, st = data
    noisy = cfg(epochs=4, lr=2e-2, warmup_steps=1)  # a high learning rate: iterates that jump around
    plain = train(tr, va, MODEL, st, noisy, tmp_path / "plain")
    ema = train(tr, va, MODEL, st, cfg(epochs=4, lr=2e-2, warmup_steps=1, ema_decay=0.9), tmp_path / "ema")
    assert [h["train_loss"] for h in ema.history] == [h["train_loss"] for h in plain.history]  # same training path
    assert ema.checkpoint == tmp_path / "ema" / "best.pt"
    best = min(h["val_loss"] for h in ema.history)
    vx, vm = window_tensors(va, MODEL.block_size, MODEL.n_features)
    assert evaluate_loss(ema.model, vx, vm, 64, torch.device("cpu")) == pytest.approx(
        best, rel=1e-5
    )  # the validated weights
    last = load_model(tmp_path / "ema" / "last.pt")  # the training weights, for resuming
    assert evaluate_loss(last, vx, vm, 64, torch.device("cpu")) == pytest.approx(
        plain.history[-1]["val_loss"], rel=1e-5
    )
    assert best < min(h["val_loss"] for h in plain.history)  # averaging the noisy iterates pays on held-out windows

    no_val = train(tr, None, MODEL, st, cfg(epochs=2, ema_decay=0.9), tmp_path / "no_val")
    assert no_val.checkpoint == tmp_path / "no_val" / "average.pt"
    saved = load_model(no_val.checkpoint).state_dict()
    raw = load_model(tmp_path / "no_val" / "last.pt").state_dict()
    assert all(torch.equal(v, no_val.model.state_dict()[k]) for k, v in saved.items())
    assert any(not torch.equal(v, raw[k]) for k, v in saved.items())  # not the training weights
    again = train(tr, None, MODEL, st, cfg(epochs=2, ema_decay=0.9), tmp_path / "no_val")  # finished: the same average
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in saved.items())


def test_select_by_fde_keeps_the_epoch_that_forecasts_best(data, tmp_path, monkeypatch):
    """``select_by="fde"``: each epoch's validation forecast error is in the history, and the kept
    model is the epoch with the lowest one (checked by forecasting again, outside training)."""
    tr, va, st = data
    res = train(
        tr,
        va,
        MODEL,
        st,
        cfg(epochs=4, select_by="fde", select_context=20, select_horizon=5),
        tmp_path,
        forecast_evaluator=evaluate_forecast,
    )
    fdes = [h["val_fde_m"] for h in res.history]
    assert len(fdes) == 4 and all(f > 0 for f in fdes)
    kept = evaluate_forecast(load_model(res.checkpoint), va, 20, 5)["fde_m"]
    assert kept == pytest.approx(min(fdes), rel=1e-6)
    best = torch.load(res.checkpoint, weights_only=True)["extra"]
    assert best["val_fde_m"] == pytest.approx(min(fdes)) and best["epoch"] == 1 + fdes.index(min(fdes))
    scores = iter([3.0, 1.0, 2.0, 5.0])  # a forecast error that disagrees with the falling validation loss
    scripted = lambda model, ws, context_len, horizon: {"fde_m": next(scores)}  # noqa: E731
    chosen = train(
        tr, va, MODEL, st, cfg(epochs=4, select_by="fde"), tmp_path / "scripted", forecast_evaluator=scripted
    )
    assert torch.load(chosen.checkpoint, weights_only=True)["extra"]["epoch"] == 2  # not the lowest loss (epoch 4)
    assert [h["val_loss"] for h in chosen.history] == sorted((h["val_loss"] for h in chosen.history), reverse=True)
    by_loss = train(tr, va, MODEL, st, cfg(epochs=4), tmp_path / "by_loss")
    assert [h["train_loss"] for h in by_loss.history] == [
        h["train_loss"] for h in res.history
    ]  # only the choice differs
    assert "val_fde_m" not in by_loss.history[0]

    for bad, text in (
        (dict(select_by="ade"), "select_by must be one of"),
        (dict(select_by="fde", select_context=1), "select_context >= 2"),
    ):
        with pytest.raises(ValueError, match=text):
            cfg(**bad)
    with pytest.raises(ValueError, match="no validation window has"):
        train(
            tr,
            va,
            MODEL,
            st,
            cfg(epochs=1, select_by="fde", select_context=30, select_horizon=5),
            tmp_path / "short",
            forecast_evaluator=evaluate_forecast,
        )
    infill = GPTConfig.from_dict(dict(n_layer=1, n_head=2, d_model=16, block_size=32, objective="infill"))
    with pytest.raises(ValueError, match="needs a model that forecasts"):
        train(
            tr,
            va,
            infill,
            st,
            cfg(epochs=1, select_by="fde"),
            tmp_path / "infill",
            forecast_evaluator=evaluate_forecast,
        )
    with pytest.raises(ValueError, match="needs a forecast evaluator"):  # trajfm.train never imports trajfm.evaluate
        train(tr, va, MODEL, st, cfg(epochs=1, select_by="fde"), tmp_path / "no_evaluator")
