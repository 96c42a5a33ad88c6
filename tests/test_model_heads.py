"""Gaussian-mixture head: exact NLL, point estimates, sampling with a temperature, masked loss,
and a mixture model that learns on realistic tracks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)
from trajfm.evaluate import evaluate_forecast, rollout
from trajfm.model import GPTConfig, TrajGPT, heads
from trajfm.model.inputs import ModelInputs
from trajfm.train import TrainConfig, evaluate_loss, train

K, T = 3, 3
CFG = GPTConfig.from_dict(
    dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0, head="mixture", n_mixture=K)
)


def test_nll_is_the_mixture_log_likelihood():
    torch.manual_seed(0)
    out = torch.randn(5, 7, K * (1 + 2 * T))
    target = torch.randn(5, 7, T)
    logits, mean, log_std = heads.split_mixture(out, K, T)
    ref = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mean, log_std.exp()), 1))
    torch.testing.assert_close(heads.mixture_nll(out, target, K), -ref.log_prob(target))


def hand_made(weights, means, stds) -> torch.Tensor:
    """Head output (1, W) of a mixture with the given component weights, means, stds (K, T)."""
    logits = torch.log(torch.tensor(weights))
    rest = torch.cat([torch.tensor(means), torch.log(torch.tensor(stds))], dim=-1)  # (K, 2T)
    return torch.cat([logits, rest.flatten()])[None]


def test_point_estimates_mode_and_mean():
    out = hand_made([0.2, 0.5, 0.3], [[0, 0, 0], [1, 2, 3], [-4, 0, 1]], [[1.0] * 3] * 3)
    torch.testing.assert_close(heads.point_estimate(CFG, out, "mode"), torch.tensor([[1.0, 2.0, 3.0]]))
    torch.testing.assert_close(heads.point_estimate(CFG, out, "mean"), torch.tensor([[0.5 - 1.2, 1.0, 1.5 + 0.3]]))
    torch.testing.assert_close(heads.sample(CFG, out, temperature=0.0), heads.point_estimate(CFG, out, "mode"))
    with pytest.raises(ValueError, match="point estimate"):
        heads.point_estimate(CFG, out, "median")


def test_sampling_draws_components_and_spreads_with_temperature():
    out = hand_made([0.25, 0.75, 1e-9], [[-10, 0, 0], [10, 5, 0], [0, 0, 0]], [[1, 2, 0.5], [1, 2, 0.5], [1, 1, 1]])
    out = out.expand(40_000, -1)
    g = torch.Generator().manual_seed(0)
    s = heads.sample(CFG, out, temperature=1.0, generator=g)  # (N, T)
    right = s[:, 0] > 0
    assert right.float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert s[right, 1].mean().item() == pytest.approx(5.0, abs=0.05)
    assert s[right, 1].std().item() == pytest.approx(2.0, rel=0.03)
    assert s[right, 2].std().item() == pytest.approx(0.5, rel=0.03)
    cold = heads.sample(CFG, out, temperature=0.25, generator=g)
    assert (cold[:, 0] > 0).float().mean().item() > 0.95  # logits / 0.25 sharpen the choice
    assert cold[cold[:, 0] > 0, 1].std().item() == pytest.approx(1.0, rel=0.05)  # std * sqrt(0.25)


def test_mixture_loss_counts_only_real_pairs_whatever_the_padding_holds():
    ws = make_windows(n_tracks=4, points=40, window=32, seed=2)
    torch.manual_seed(0)
    m = TrajGPT(CFG)
    st = stats_of(ws)
    m.set_normalization(st["mean"], st["std"])
    m.eval()
    x, mask = torch.from_numpy(ws.x), torch.from_numpy(ws.mask).clone()
    mask[0, 9:] = False
    nan = x.clone()
    nan[~mask] = float("nan")
    with torch.no_grad():
        loss = m.loss(x, mask)
        assert m.loss(nan, mask) == loss
        out = m(ModelInputs(x, mask))[:, :-1]
        target = m.normalize(x, mask)[:, 1:, :T]
        pair = mask[:, :-1] & mask[:, 1:]
        manual = heads.mixture_nll(out, target, K)[pair].mean()
    torch.testing.assert_close(loss, manual)
    assert m.predict(x, mask).shape == (len(ws), 1, T)
    assert torch.isfinite(m.predict(nan, mask, how="sample", generator=torch.Generator().manual_seed(1))).all()


def test_mixture_model_learns_on_tracks_and_rolls_out(tmp_path):
    tr = make_windows(n_tracks=24, points=90, window=32, seed=10, stride=16)
    va = make_windows(n_tracks=6, points=90, window=32, seed=11)
    st = stats_of(tr)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, warmup_steps=3, device="cpu")
    model_cfg = GPTConfig.from_dict({**CFG.to_dict(), "position": "st-rope"})
    torch.manual_seed(0)
    untrained = TrajGPT(model_cfg)
    untrained.set_normalization(st["mean"], st["std"])
    vx, vm = torch.from_numpy(va.x), torch.from_numpy(va.mask)
    before = evaluate_loss(untrained, vx, vm, 64, torch.device("cpu"))
    res = train(tr, va, model_cfg, st, cfg, tmp_path)
    after = evaluate_loss(res.model, vx, vm, 64, torch.device("cpu"))
    assert after < before - 1.0, (before, after)  # nats per point
    metrics = evaluate_forecast(res.model, va, 16, 8)
    assert all(math.isfinite(v) for v in metrics.values())
    g = torch.Generator().manual_seed(0)
    lon, lat, t = rollout(res.model, va, 16, 8, how="sample", generator=g)
    assert np.isfinite(lon).all() and (np.diff(t, axis=1) >= 0).all()
