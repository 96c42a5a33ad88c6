"""Patching (TimesFM): P points per token, Q >= P points predicted per token."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthetic_tracks import (
    jittered_model,
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
    straight_track,
    windows_from_tracks,
)
from trajfm.evaluate import evaluate_forecast, rollout
from trajfm.geo import haversine_m
from trajfm.model import GPTConfig, TrajGPT
from trajfm.model.inputs import ModelInputs
from trajfm.model.patching import next_points

P, Q = 4, 8
NS = 1_000_000_000


@pytest.fixture(scope="module")
def windows():
    return make_windows(n_tracks=6, points=48, window=32, seed=13)


def patched(windows, **kw) -> TrajGPT:
    return jittered_model(
        windows, n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0, patch_in=P, patch_out=Q, **kw
    )


def test_each_token_targets_the_points_after_its_patch():
    L = 16
    target = torch.arange(L, dtype=torch.float32)[None, :, None]  # point index as the value
    mask = torch.ones(1, L, dtype=torch.bool)
    mask[0, 13:] = False
    tgt, valid = next_points(target, mask, P, Q)
    assert tgt.shape == (1, L // P, Q, 1)
    assert tgt[0, 0, :, 0].tolist() == list(range(4, 12))  # token 0 = points 0..3 -> points 4..11
    assert valid[0].sum(dim=1).tolist() == [8, 5, 1, 0]  # real and inside: points < 13
    one, v1 = next_points(target, mask, 1, 1)  # the plain model: point i -> point i+1
    assert one[0, :12, 0, 0].tolist() == list(range(1, 13)) and v1[0, :, 0].sum() == 12


def test_patched_model_is_causal_over_patches_and_ignores_padding(windows):
    m = patched(windows)
    full = np.flatnonzero(windows.mask.all(axis=1))[:3]
    x, mask = torch.from_numpy(windows.x[full]), torch.from_numpy(windows.mask[full]).clone()
    with torch.no_grad():
        ref = m(ModelInputs(x, mask))  # (B, 8 tokens, Q * T)
        assert ref.shape == (3, 32 // P, Q * 3)
        x2 = x.clone()
        x2[:, 12:] = torch.randn_like(x2[:, 12:]) * 300  # tokens 3.. change
        out = m(ModelInputs(x2, mask))
        assert torch.equal(out[:, :3], ref[:, :3]) and not torch.allclose(out[:, 3:], ref[:, 3:])
        mask[1, 22:] = False  # token 5 (points 20..23) is partial: not real, nor anything after it
        nan = x.clone()
        nan[~mask] = float("nan")
        a, b = m(ModelInputs(x, mask)), m(ModelInputs(nan, mask))
        assert torch.equal(a[1, :5], b[1, :5]) and torch.isfinite(b).all()
        assert m.loss(nan, mask) == m.loss(x, mask)


def test_predict_ends_the_last_patch_at_the_last_real_point(windows):
    m = patched(windows)
    x, mask = torch.from_numpy(windows.x[:2]), torch.from_numpy(windows.mask[:2]).clone()
    mask[:, 19:] = False  # 19 real points: the last whole patches are points 3..18
    pred = m.predict(x, mask)
    assert pred.shape == (2, Q, 3)
    trimmed = m.predict(x[:, 3:19], torch.ones(2, 16, dtype=torch.bool))
    torch.testing.assert_close(pred, trimmed)
    short = m.predict(x[:, :2], torch.ones(2, 2, dtype=torch.bool))  # fewer points than one patch
    assert torch.isfinite(short).all()


def test_oracle_patched_model_rolls_a_straight_track_out_exactly():
    """Head zeroed, mean step in the normalization: every point of every output patch is exact."""
    tracks = [(f"s{k}", *straight_track(60, 80.0, 60.0, 60 * NS, lon0=-74 + k)) for k in range(3)]
    ws = windows_from_tracks(tracks, window=60)
    torch.manual_seed(0)
    m = TrajGPT(
        GPTConfig.from_dict(dict(n_layer=1, n_head=2, d_model=16, block_size=32, dropout=0.0, patch_in=P, patch_out=Q))
    )
    m.set_normalization([80.0, 60.0, math.log1p(60.0), 0, 0, 0, 0], [100.0, 100.0, 1, 1, 1, 1, 1])
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.zero_()
    calls = []
    m.register_forward_hook(lambda *a: calls.append(1))
    lon, lat, t = rollout(m.eval(), ws, context_len=18, horizon=20)  # 18 points: 4 whole patches + 2
    assert haversine_m(lon, lat, ws.lon[:, 18:38], ws.lat[:, 18:38]).max() < 1e-6
    assert np.array_equal(t, ws.t_ns[:, 18:38])
    assert len(calls) == math.ceil(20 / Q)  # one call per output patch: 3, not 20


def test_patched_model_trains_and_forecasts(windows, tmp_path):
    from trajfm.train import TrainConfig, train

    tr = make_windows(n_tracks=16, points=90, window=32, seed=10, stride=16)
    st = stats_of(tr)
    cfg = GPTConfig.from_dict(
        dict(
            n_layer=2,
            n_head=2,
            d_model=32,
            block_size=32,
            dropout=0.0,
            patch_in=P,
            patch_out=Q,
            head="mixture",
            n_mixture=2,
        )
    )
    res = train(
        tr, None, cfg, st, TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, device="cpu"), tmp_path
    )
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    metrics = evaluate_forecast(res.model, windows, 16, 12)
    assert metrics["n_windows"] > 0 and all(np.isfinite(v) for v in metrics.values())
