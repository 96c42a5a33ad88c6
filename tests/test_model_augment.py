"""Training-time augmentation (``GPTConfig.augment``): each window's steps turned by a random
angle (and mirrored), lengths / times / calendar untouched, training mode only, resumable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)
from trajfm.model import GPTConfig, TrajGPT, load_preset
from trajfm.model.gpt import augment_steps
from trajfm.train import TrainConfig, train


@pytest.fixture(scope="module")
def windows():
    ws = make_windows(n_tracks=12, points=80, window=32, seed=3, stride=16)
    ws.x[:3, 25:] = 0.0  # three windows padded at the end, as short pieces are
    ws.mask[:3, 25:] = False
    return ws


def _turns(x: torch.Tensor) -> torch.Tensor:
    """(B, L-1) signed cross product of consecutive steps: > 0 for a left turn."""
    dx, dy = x[..., 0].double(), x[..., 1].double()
    return dx[:, :-1] * dy[:, 1:] - dy[:, :-1] * dx[:, 1:]


@pytest.mark.parametrize("how", ["rotate", "rotate-flip"])
def test_augment_turns_steps_and_keeps_the_rest(windows, how):
    x = torch.from_numpy(windows.x)
    y = augment_steps(x, how, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y[..., :2].norm(dim=-1), x[..., :2].norm(dim=-1), rtol=1e-5, atol=1e-3)  # step lengths
    assert torch.equal(y[..., 2:], x[..., 2:])  # time gaps and calendar cycles
    pad = ~torch.from_numpy(windows.mask)
    assert torch.equal(y[pad], torch.zeros_like(y[pad]))  # padding stays zero
    # one angle per window: the heading change between consecutive steps is kept up to the mirror
    same = torch.isclose(_turns(y), _turns(x), rtol=1e-4, atol=1e-2).all(dim=1)
    mirrored = torch.isclose(_turns(y), -_turns(x), rtol=1e-4, atol=1e-2).all(dim=1)
    assert bool((same | mirrored).all())
    if how == "rotate":
        assert bool(same.all())
    else:
        assert 0 < int(mirrored.sum()) < len(x)  # about half the windows are mirrored
    # the windows are turned by different angles, and the same draws give the same windows
    first = torch.atan2(y[:, 1, 1], y[:, 1, 0]) - torch.atan2(x[:, 1, 1], x[:, 1, 0])
    assert len(torch.unique(torch.round(torch.remainder(first, 2 * math.pi), decimals=3))) > len(x) // 2
    assert torch.equal(augment_steps(x, how, torch.Generator().manual_seed(0)), y)
    assert not torch.equal(augment_steps(x, how, torch.Generator().manual_seed(1)), y)


def test_augment_changes_the_training_loss_only(windows):
    st = stats_of(windows)
    base = GPTConfig(n_layer=1, n_head=2, d_model=32, block_size=32, dropout=0.0)
    torch.manual_seed(0)
    plain = TrajGPT(base)
    plain.set_normalization(st["mean"], st["std"])
    aug = TrajGPT(GPTConfig.from_dict({**base.to_dict(), "augment": "rotate-flip"}))
    aug.load_state_dict(plain.state_dict())
    x, m = torch.from_numpy(windows.x), torch.from_numpy(windows.mask)
    plain.eval(), aug.eval()
    with torch.no_grad():  # validation / evaluation: never augmented
        assert torch.equal(aug.loss(x, m), plain.loss(x, m))
        plain.train(), aug.train()
        turned = augment_steps(x, "rotate-flip", torch.Generator().manual_seed(5))
        got = aug.loss(x, m, generator=torch.Generator().manual_seed(5))
        assert torch.equal(got, plain.loss(turned, m))  # the loss of the turned windows
        assert not torch.equal(got, plain.loss(x, m))


def test_augment_is_refused_with_absolute_position():
    with pytest.raises(ValueError, match="augment"):
        GPTConfig.from_dict(dict(augment="rotate", space_encoding="sinusoidal"))
    with pytest.raises(ValueError, match="augment"):
        GPTConfig.from_dict(dict(augment="spin"))
    assert GPTConfig().to_dict()["inputs"]["augment"] == "none"  # every field in the nested dict
    assert GPTConfig.from_dict(dict(augment="rotate")).to_dict()["inputs"]["augment"] == "rotate"


def test_augmented_training_resumes_bit_for_bit(windows, tmp_path):
    """The angles come from the global RNG, which the checkpoint carries: 2N steps in one go and
    N + crash + N give the same losses and weights."""
    st = stats_of(windows)
    model = load_preset("tutorial", block_size=32, augment="rotate-flip")
    steps = 2 * math.ceil(len(windows) / 8)
    config = TrainConfig(
        epochs=4,
        batch_size=8,
        lr=3e-3,
        warmup_steps=2,
        seed=0,
        device="cpu",
        max_steps=steps,
        checkpoint_every=steps // 2,
    )
    full = train(windows, windows, model, st, config, tmp_path / "full")

    class Crash(RuntimeError):
        pass

    def crash(record):
        if record["step"] >= steps // 2:
            raise Crash

    with pytest.raises(Crash):
        train(windows, windows, model, st, config, tmp_path / "run", on_epoch=crash)
    resumed = train(windows, windows, model, st, config, tmp_path / "run")
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_augmented_model_learns_turned_motion_alike(windows, tmp_path):
    """Trained with ``rotate``, a model forecasts a turned context almost as the turned forecast
    of the original: its errors under rotation are much smaller than the unaugmented model's."""
    st = stats_of(windows)
    config = TrainConfig(epochs=30, batch_size=16, lr=3e-3, warmup_steps=5, seed=0, device="cpu", checkpoint_every=0)
    x, m = torch.from_numpy(windows.x), torch.from_numpy(windows.mask)
    angle = torch.tensor(2.0)
    c, s = torch.cos(angle), torch.sin(angle)
    turned = x.clone()
    turned[..., 0], turned[..., 1] = c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]
    gaps = {}
    for how in ("none", "rotate"):
        cfg = load_preset("tutorial", block_size=32, dropout=0.0, augment=how)
        model = train(windows, None, cfg, st, config, tmp_path / how).model
        with torch.no_grad():
            a = model.predict_next(x, m)[..., :2]
            b = model.predict_next(turned, m)[..., :2]
        a_turned = torch.stack([c * a[..., 0] - s * a[..., 1], s * a[..., 0] + c * a[..., 1]], dim=-1)
        gaps[how] = float((b - a_turned).norm(dim=-1).mean())  # metres, after each window's last point
    assert gaps["rotate"] < 0.5 * gaps["none"], gaps
    assert np.isfinite(list(gaps.values())).all()
