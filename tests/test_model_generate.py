"""KV-cache generation: the same predictions as recomputing the prefix, for every kind of model,
with contexts of different lengths in one batch, and past block_size (where it recomputes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_tracks import (
    jittered_model,
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
)
from trajfm.evaluate.forecast import rollout
from trajfm.geo import haversine_m
from trajfm.model import KVCache, Rollout, TrajGPT
from trajfm.model.inputs import ModelInputs

BLOCK = 24
VARIANTS = {
    "gpt2": dict(),
    "rope": dict(position="rope"),
    "st-rope+mixture": dict(position="st-rope", head="mixture", n_mixture=3),
    "time2vec+kinds": dict(time_encoding="time2vec", n_kinds=3),
    "space": dict(space_encoding="sinusoidal"),
    "context-norm": dict(norm="context", norm_points=4, anchor="velocity", frame="heading"),
}


@pytest.fixture(scope="module")
def tracks():
    return make_windows(n_tracks=6, points=70, window=64, seed=21)  # 35..70 points, padded to 64


def make_model(ws, **kw) -> TrajGPT:
    return jittered_model(ws, n_layer=2, n_head=2, d_model=32, block_size=BLOCK, dropout=0.0, **kw)


def lonlat_of(ws):
    return torch.from_numpy(np.stack([ws.lon, ws.lat], axis=-1))


def teacher_forced(model, ws, n0: np.ndarray, steps: int, use_cache: bool, **predict):
    """Predictions (steps, B, Q, T) while feeding each row's TRUE next points one at a time."""
    x, ll = torch.from_numpy(ws.x), lonlat_of(ws)
    kind = torch.arange(len(n0)) % 3 if model.config.inputs.n_kinds else None
    state = Rollout(
        model, x[:, : n0.max()], torch.from_numpy(n0), lonlat=ll[:, : n0.max()], kind=kind, use_cache=use_cache
    )
    rows = np.arange(len(n0))
    preds, cached = [], []
    for s in range(steps):
        preds.append(state.predict(**predict))
        cached.append(state.uses_cache)
        idx = n0 + s
        state.extend(x[rows, idx][:, None], ll[rows, idx][:, None])
    return torch.stack(preds), cached


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_kv_cache_equals_recompute_with_ragged_contexts_and_past_block_size(tracks, variant):
    model = make_model(tracks, **VARIANTS[variant])
    real = tracks.mask.sum(axis=1)
    rows = np.flatnonzero(real >= 40)[:4]
    ws = tracks.subset(rows)
    n0 = np.array([3, 10, 17, 21])[: len(rows)]  # ragged contexts, all inside block_size (24)
    steps = 40 - int(n0.max())  # the longest row passes block_size after 3 steps
    with_cache, cached = teacher_forced(model, ws, n0, steps, use_cache=True)
    without, never = teacher_forced(model, ws, n0, steps, use_cache=False)
    torch.testing.assert_close(with_cache, without, rtol=1e-4, atol=1e-3)  # raw metres, log1p seconds
    assert not any(never)
    # the cache serves until some row would pass block_size, then every step recomputes
    first_full = BLOCK - int(n0.max())
    assert cached == [True] * (first_full + 1) + [False] * (steps - first_full - 1)


def test_each_row_matches_the_row_alone(tracks):
    model = make_model(tracks, position="st-rope")
    ws = tracks.subset(np.flatnonzero(tracks.mask.sum(axis=1) >= 40)[:3])
    n0 = np.array([5, 12, 20])
    batch, _ = teacher_forced(model, ws, n0, 6, use_cache=True)
    for b in range(3):
        alone, _ = teacher_forced(model, ws.subset([b]), n0[[b]], 6, use_cache=True)
        torch.testing.assert_close(batch[:, b], alone[:, 0], rtol=1e-4, atol=1e-3)


def test_cached_rollout_equals_recomputed_rollout_in_degrees_and_time(tracks):
    model = make_model(tracks, position="rope", head="mixture", n_mixture=3)
    kw = dict(context_len=16, horizon=12)
    a = rollout(model, tracks, **kw, use_cache=True)
    b = rollout(model, tracks, **kw, use_cache=False)
    assert haversine_m(a[0], a[1], b[0], b[1]).max() < 0.05  # metres, after 12 steps
    assert np.abs(a[2] - b[2]).max() <= 1_000_000  # 1 ms: time is rounded to whole milliseconds
    # sampling: the same generator seed draws the same trajectories either way
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s1 = rollout(model, tracks, **kw, how="sample", temperature=0.8, generator=g1, use_cache=True)
    s2 = rollout(model, tracks, **kw, how="sample", temperature=0.8, generator=g2, use_cache=False)
    assert haversine_m(s1[0], s1[1], s2[0], s2[1]).max() < 0.05
    assert haversine_m(s1[0], s1[1], a[0], a[1]).max() > 1.0  # and samples are not the mode


def test_contexts_longer_than_block_size_start_without_cache(tracks):
    model = make_model(tracks)
    x = torch.from_numpy(tracks.x[:2])
    state = Rollout(model, x, torch.tensor([BLOCK + 5, 10]))
    assert not state.uses_cache  # one row is already past block_size: recompute (as before)
    ref = model.predict(*_last_block(tracks, [0, 1], [BLOCK + 5, 10]))
    torch.testing.assert_close(state.predict(), ref)


def _last_block(ws, rows, n):
    """The (x, mask) the no-cache rollout feeds: each row's last <= BLOCK points, left-aligned."""
    out = np.zeros((len(rows), BLOCK, ws.x.shape[2]), np.float32)
    mask = np.zeros((len(rows), BLOCK), bool)
    for i, (r, k) in enumerate(zip(rows, n)):
        s = max(k - BLOCK, 0)
        out[i, : k - s], mask[i, : k - s] = ws.x[r, s:k], True
    return torch.from_numpy(out), torch.from_numpy(mask)


def test_a_full_cache_is_a_clear_error(tracks):
    model = make_model(tracks)
    cache = KVCache(model.config, 1, torch.device("cpu"))
    x = torch.from_numpy(tracks.x[:1, :BLOCK])
    model(ModelInputs(x, torch.ones(1, BLOCK, dtype=torch.bool)), cache=cache)
    with pytest.raises(ValueError, match="KV cache full"):
        cache.begin(1)


def test_rollout_validates_its_inputs(tracks):
    model = make_model(tracks)
    x = torch.from_numpy(tracks.x[:2])
    with pytest.raises(ValueError, match="n_real"):
        Rollout(model, x, torch.tensor([0, 3]))
    spatial = make_model(tracks, space_encoding="sinusoidal")
    with pytest.raises(ValueError, match="lonlat"):
        Rollout(spatial, x, torch.tensor([4, 3]))
