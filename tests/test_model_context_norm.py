"""``norm="context"``: each sequence in units of its own early steps (TimesFM's per-context
normalization). Predictions scale with the movement they continue, only earlier points set the
units, every path (loss, predict, KV-cache rollout, decode) uses the same units, and a model
trained on vessels forecasts movers twenty times slower in its own units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trajfm.train as train_mod
from synthetic_tracks import (
    jittered_model,
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)
from trajfm.model import GPTConfig, Rollout, TrajGPT, load_preset
from trajfm.model.inputs import ModelInputs
from trajfm.train import TrainConfig, train

SMALL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)


@pytest.fixture(scope="module")
def windows():
    return make_windows(n_tracks=16, points=80, window=32, seed=7, stride=16)  # ~60 s, ~5 m/s vessels


def make_model(ws, **kw) -> TrajGPT:
    return jittered_model(ws, **{**SMALL, **kw})


def scaled(x: torch.Tensor, k: float, dlog: float = 0.0) -> torch.Tensor:
    """Steps k times longer, log_dt shifted by ``dlog``; calendar features unchanged."""
    y = x.clone()
    y[..., :2] *= k
    y[..., 2] += dlog
    return y


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(patch_in=4, patch_out=8),
        dict(head="mixture", n_mixture=3),
        dict(anchor="velocity", frame="heading", turn_inputs=True),
    ],
    ids=["tutorial", "patched", "mixture", "anchored"],
)
def test_forecasts_scale_with_the_movement(windows, options):
    """With a negligible floor, steps k times longer and time gaps shifted give the same forecast
    in the same proportion: the model works in the sequence's own units."""
    m = make_model(windows, norm="context", norm_floor_m=1e-6, **options)
    x, mask = torch.from_numpy(windows.x[:6]), torch.from_numpy(windows.mask[:6])
    with torch.no_grad():
        ref = m.predict(x, mask)  # (B, Q, 3) raw
        for k, dlog in ((0.05, -1.5), (20.0, 0.7)):
            got = m.predict(scaled(x, k, dlog), mask)
            torch.testing.assert_close(got[..., :2], ref[..., :2] * k, rtol=2e-3, atol=1e-3 * k)
            torch.testing.assert_close(got[..., 2], ref[..., 2] + dlog, rtol=1e-4, atol=1e-3)
    plain = make_model(windows)  # global statistics: no such symmetry
    with torch.no_grad():
        assert not torch.allclose(
            plain.predict(scaled(x, 0.05), mask)[..., :2], plain.predict(x, mask)[..., :2] * 0.05, rtol=0.05
        )


def test_the_loss_counts_metres_or_the_sequences_units(windows):
    """``norm_loss="metres"`` (MSE head) weights each sequence's (dx, dy) errors by its unit, so
    steps k times longer cost k^2 times more, as metres do; ``"units"`` costs the same at every
    scale; a mixture's NLL is left as it is (metres only shift it by log(unit) per sequence)."""
    x, mask = torch.from_numpy(windows.x[:8]), torch.from_numpy(windows.mask[:8])
    base = dict(norm="context", norm_floor_m=1e-6, patch_in=4, patch_out=8)
    with torch.no_grad():
        metres = make_model(windows, **base)
        st = stats_of(windows)
        assert float(metres.step_unit_m) == pytest.approx(float(np.sqrt(np.mean(np.square(st["std"][:2])))), rel=1e-6)
        l1, l2, l3 = (float(metres.loss(scaled(x, k), mask)) for k in (1.0, 2.0, 3.0))
        assert (l3 - l1) / (l2 - l1) == pytest.approx(8.0 / 3.0, rel=1e-3)  # L(k) = k^2 A + B
        units = make_model(windows, **base, norm_loss="units")
        assert float(units.loss(scaled(x, 3.0), mask)) == pytest.approx(float(units.loss(x, mask)), rel=1e-4)
        mix = make_model(windows, **base, head="mixture", n_mixture=2)
        mix_units = make_model(windows, **base, head="mixture", n_mixture=2, norm_loss="units")
        assert torch.equal(mix.loss(x, mask), mix_units.loss(x, mask))


def test_units_come_from_the_early_steps_only(windows):
    m = make_model(windows, norm="context", norm_points=6)
    x, mask = torch.from_numpy(windows.x[:4]), torch.from_numpy(windows.mask[:4])
    units = m.context_scale(x, mask)
    steps = x[:, 1:7, :2].double().norm(dim=-1).mean(1) + m.config.normalisation.norm_floor_m
    torch.testing.assert_close(units[:, 0].double(), steps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(units[:, 1], x[:, 1:7, 2].mean(1), rtol=1e-5, atol=1e-5)
    later = x.clone()
    later[:, 7:, :2] *= 10.0  # only points after norm_points change
    assert torch.equal(m.context_scale(later, mask), units)
    short = mask.clone()
    short[:, 1:] = False  # a single point: the floor alone, no time shift
    assert torch.equal(m.context_scale(x, short), torch.tensor([[m.config.normalisation.norm_floor_m, 0.0]] * 4))
    # the model's stored statistics no longer hold metres for the steps
    assert m.feat_mean[:3].abs().max() == 0 and torch.equal(m.feat_std[:3], torch.ones(3))


def test_the_loss_skips_tokens_whose_units_include_their_targets(windows):
    """Tokens ending before point ``norm_points`` are not scored, and ``target_count`` counts as
    the loss does, so gradient accumulation still adds up to the global batch's loss."""
    for patch in ((1, 1), (4, 8)):
        m = make_model(windows, norm="context", patch_in=patch[0], patch_out=patch[1])
        first = m.config.first_scored_token
        assert first == -(-(m.config.normalisation.norm_points + 1) // patch[0]) - 1 > 0
        x, mask = torch.from_numpy(windows.x[:8]), torch.from_numpy(windows.mask[:8]).clone()
        mask[5, 20:] = False
        mask[6, 5:] = False  # too short to be scored at all
        with torch.no_grad():
            whole = m.loss(x, mask)
            n = train_mod.target_count(mask, *patch, first)
            parts = [(slice(0, 3), slice(3, 8))]
            acc = sum(m.loss(x[s], mask[s]) * train_mod.target_count(mask[s], *patch, first) / n for s in parts[0])
        torch.testing.assert_close(acc, whole, rtol=1e-5, atol=1e-6)
        assert train_mod.target_count(mask, *patch, first) < train_mod.target_count(mask, *patch)


def test_decoding_and_caching_without_units_are_clear_errors(windows):
    m = make_model(windows, norm="context")
    x, mask = torch.from_numpy(windows.x[:2]), torch.from_numpy(windows.mask[:2])
    with torch.no_grad():
        out = m(ModelInputs(x, mask))
        with pytest.raises(ValueError, match="norm"):
            m.decode(out[:, -1])
        r = Rollout(m, x[:, :10], torch.tensor([10, 7]))
        assert r.uses_cache and r.norm is not None
        with pytest.raises(ValueError, match="KV cache"):
            m(ModelInputs(x[:, 10:11], mask[:, 10:11]), cache=r.cache)
        # the rollout's units are its contexts', and its first prediction is predict's
        torch.testing.assert_close(
            r.predict(), m.predict(x[:, :10], mask[:, :10] & (torch.arange(10) < torch.tensor([[10], [7]])))
        )


@pytest.mark.parametrize(
    "bad",
    [
        dict(norm_loss="feet"),
        dict(objective="infill"),
        dict(step_scale="speed"),
        dict(time_encoding="time2vec"),
        dict(norm_points=0),
        dict(norm_points=64),
        dict(norm_floor_m=0.0),
        dict(norm="instance"),
    ],
)
def test_unsupported_combinations_are_refused(bad):
    with pytest.raises(ValueError, match="norm"):
        GPTConfig.from_dict({"norm": "context", **bad})


def test_a_vessel_model_forecasts_slower_movers_in_their_own_units(windows, tmp_path):
    """Trained on vessel-like tracks (~300 m steps), tested on the same kind of motion twenty times
    smaller (~15 m steps, a walker's): the context-normalized model's next-step error shrinks with
    the motion, the globally normalized one's does not."""
    st = stats_of(windows)
    config = TrainConfig(epochs=25, batch_size=16, lr=3e-3, warmup_steps=5, seed=0, device="cpu", checkpoint_every=0)
    x, mask = torch.from_numpy(windows.x), torch.from_numpy(windows.mask)
    ctx = mask.clone()
    ctx[:, 20:] = False  # 20 points of context, the next point is the target
    truth = x[:, 20, :2].double()
    small = scaled(x, 0.05)
    err = {}
    for norm in ("global", "context"):
        cfg = load_preset("tutorial", block_size=32, dropout=0.0, norm=norm, norm_floor_m=0.5)
        model = train(windows, None, cfg, st, config, tmp_path / norm).model
        with torch.no_grad():
            own = (model.predict_next(x, ctx)[:, :2].double() - truth).norm(dim=-1).mean()
            other = (model.predict_next(small, ctx)[:, :2].double() - 0.05 * truth).norm(dim=-1).mean()
        err[norm] = (float(own), float(other))
    own, other = err["context"]
    assert other < 0.1 * own, err  # about 0.05x: the same forecast at the small movers' scale
    assert err["global"][1] > 3 * other, err  # the global model is lost at the unseen scale
    assert np.isfinite(np.array(list(err.values()))).all()


def test_context_configs_name_their_loss_in_cache_keys():
    """Every config carries ``norm`` and ``norm_loss`` in its nested dict (cache keys, identities),
    and the dict loads back to the same config."""
    assert GPTConfig.from_dict(dict(norm="context")).to_dict()["normalisation"]["norm_loss"] == "metres"
    units = GPTConfig.from_dict(dict(norm="context", norm_loss="units"))
    assert units.to_dict()["normalisation"]["norm_loss"] == "units"
    assert GPTConfig().to_dict()["normalisation"] == {
        "norm": "global",
        "norm_points": 8,
        "norm_floor_m": 5.0,
        "norm_loss": "metres",
    }
    context = GPTConfig.from_dict(dict(norm="context"))
    assert GPTConfig.from_dict(context.to_dict()) == context
