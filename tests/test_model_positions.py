"""Positions: rotary scores depend on index differences only; spatio-temporal rotary scores on
displacements in metres and seconds only, so moving a whole trajectory changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_tracks import (
    jittered_model,
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
)
from trajfm.model import GPTConfig, TrajGPT
from trajfm.model.inputs import ModelInputs
from trajfm.model.positions import Rotary, apply_rotary, point_coords


def scores(rotary: Rotary, q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    cos, sin = rotary(pos)
    return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2)  # (B, H, L, L)


@pytest.fixture(scope="module")
def windows():
    return make_windows(n_tracks=6, points=48, window=32, seed=9)


def model(windows, **kw) -> TrajGPT:
    return jittered_model(windows, n_layer=2, n_head=2, d_model=48, block_size=32, dropout=0.0, **kw)


def test_rope_scores_depend_only_on_index_differences():
    rot = Rotary(GPTConfig.from_dict(dict(d_model=64, n_head=2, position="rope")))
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 16, 32), torch.randn(2, 2, 16, 32)
    index = torch.arange(16)[None].expand(2, 16)
    ref = scores(rot, q, k, index)
    for shift in (1, 7, 1000):
        torch.testing.assert_close(scores(rot, q, k, index + shift), ref, rtol=1e-4, atol=1e-4)
    stretched = scores(rot, q, k, index * 2)  # other differences: other scores
    assert not torch.allclose(stretched, ref, atol=1e-2)


def test_rope_model_outputs_ignore_where_the_index_starts(windows):
    """Token positions 5..36 instead of 0..31 (what a KV cache past a prefix sees): same outputs."""
    m = model(windows, position="rope")
    x, mask = torch.from_numpy(windows.x[:4]), torch.from_numpy(windows.mask[:4])
    with torch.no_grad():
        h = m.embed(x, mask)
        ref = m.backbone(h, mask)
        later = m.backbone(h, mask, index=torch.arange(32)[None] + 5)
        halved = m.backbone(h, mask, index=torch.arange(32)[None] // 2)
    torch.testing.assert_close(later[mask], ref[mask], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(halved[mask], ref[mask], atol=1e-3)


def test_st_rope_scores_depend_only_on_displacement_and_elapsed_time():
    rot = Rotary(
        GPTConfig.from_dict(dict(d_model=96, n_head=4, position="st-rope"))
    )  # 12 pairs: 4 east, 4 north, 4 time
    torch.manual_seed(1)
    q, k = torch.randn(1, 4, 20, 24), torch.randn(1, 4, 20, 24)
    coords = torch.cumsum(torch.randn(1, 20, 3, dtype=torch.float64) * torch.tensor([300.0, 300.0, 60.0]), dim=1)
    ref = scores(rot, q, k, coords)
    # New York -> Beijing -> 50 years later: far coordinates, float64 angles keep the scores
    for shift in ([5_000.0, -3_000.0, 3_600.0], [1.2e7, -4.0e6, 1.6e9]):
        torch.testing.assert_close(
            scores(rot, q, k, coords + torch.tensor(shift, dtype=torch.float64)), ref, rtol=1e-4, atol=1e-4
        )
    moved = coords.clone()
    moved[0, 10:, 0] += 250.0  # one displacement changes: the scores across it change
    assert not torch.allclose(scores(rot, q, k, moved), ref, atol=1e-3)


def test_st_rope_model_is_translation_invariant_on_real_tracks(windows):
    """Moving a whole trajectory (east, north metres; seconds) leaves every output unchanged."""
    m = model(windows, position="st-rope", head="mixture", n_mixture=3)
    x, mask = torch.from_numpy(windows.x), torch.from_numpy(windows.mask)
    coords = point_coords(x, mask)  # east, north metres and seconds from each window's first point
    with torch.no_grad():
        ref = m(ModelInputs(x, mask))
        torch.testing.assert_close(m(ModelInputs(x, mask, coords=coords)), ref)  # the default is these coordinates
        for shift in ([2_500.0, -800.0, 0.0], [-3.0e6, 4.5e6, 1.59e9]):
            out = m(ModelInputs(x, mask, coords=coords + torch.tensor(shift, dtype=torch.float64)))
            torch.testing.assert_close(out[mask], ref[mask], rtol=1e-4, atol=1e-4)
        # ...but the geometry inside the trajectory matters: stretch it and the outputs move
        stretched = m(ModelInputs(x, mask, coords=coords * torch.tensor([1.5, 1.5, 1.0], dtype=torch.float64)))
        assert not torch.allclose(stretched[mask], ref[mask], atol=1e-3)


def test_point_coords_are_running_sums_of_real_steps(windows):
    x, mask = torch.from_numpy(windows.x[:3]), torch.from_numpy(windows.mask[:3]).clone()
    mask[1, 10:] = False
    garbage = x.clone()
    garbage[~mask] = float("nan")
    c = point_coords(garbage, mask)
    assert torch.isfinite(c).all()
    east = np.cumsum(windows.x[1, :10, 0].astype(np.float64))
    np.testing.assert_allclose(c[1, :10, 0].numpy(), east, rtol=1e-9)
    secs = np.cumsum(np.expm1(windows.x[1, :10, 2].astype(np.float64)))
    np.testing.assert_allclose(c[1, :10, 2].numpy(), secs, rtol=1e-6)
    assert (c[1, 10:] == c[1, 9]).all()  # padding adds nothing


@pytest.mark.parametrize("kind", ["rope", "st-rope"])
def test_rotary_models_are_causal_and_ignore_padding(windows, kind):
    m = model(windows, position=kind)
    full = np.flatnonzero(windows.mask.all(axis=1))[:3]
    x, mask = torch.from_numpy(windows.x[full]), torch.from_numpy(windows.mask[full]).clone()
    mask[1, 12:] = False
    with torch.no_grad():
        ref = m(ModelInputs(x, mask))
        x2 = x.clone()
        x2[:, 20:] = torch.randn_like(x2[:, 20:]) * 300
        x2[~mask] = float("nan")
        out = m(ModelInputs(x2, mask))
    assert torch.equal(out[:, :20][mask[:, :20]], ref[:, :20][mask[:, :20]])
    assert torch.isfinite(out).all()
    assert "transformer.wpe.weight" not in m.state_dict()  # no position table to outgrow
