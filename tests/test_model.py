"""TrajGPT: presets, causality, padding, normalization inside the model, checkpoints."""

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
from trajfm.features.encode import N_FEATURES, N_TARGETS
from trajfm.model import GPTConfig, TrajGPT, describe_presets, list_presets, load_model, load_preset, save_checkpoint
from trajfm.model.checkpoint import load_checkpoint
from trajfm.model.inputs import ModelInputs

SMALL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)


@pytest.fixture(scope="module")
def windows():
    return make_windows(n_tracks=6, points=60, window=32, seed=3, stride=16)


@pytest.fixture
def model(windows):
    torch.manual_seed(0)
    m = TrajGPT(GPTConfig.from_dict(SMALL))
    st = stats_of(windows)
    m.set_normalization(st["mean"], st["std"])
    return m.eval()


def batch(ws, idx=slice(None)):
    return torch.from_numpy(ws.x[idx]), torch.from_numpy(ws.mask[idx])


# --- presets -------------------------------------------------------------------------------


def test_presets_are_listed_and_load():
    assert {
        "tutorial",
        "trajgpt2-small",
        "trajfm-rope",
        "timesfm-patch",
        "timesfm-patch-large",
        "timesfm-patch-context",
    } <= set(list_presets())
    assert set(describe_presets()) == set(list_presets()) and all(describe_presets().values())
    tut = load_preset("tutorial")
    assert (tut.n_layer, tut.n_head, tut.d_model, tut.block_size) == (2, 4, 96, 64)
    assert (tut.n_features, tut.n_targets) == (N_FEATURES, N_TARGETS)
    assert (tut.positions.position, tut.output.head, tut.patching.patch_in, tut.patching.patch_out) == (
        "learned",
        "mse",
        1,
        1,
    )
    assert (tut.inputs.space_encoding, tut.inputs.time_encoding, tut.inputs.n_kinds) == ("none", "none", 0)
    assert tut == GPTConfig.from_dict(
        {**GPTConfig().to_dict(), "n_layer": 2, "n_head": 4, "d_model": 96}
    )  # the defaults
    rope = load_preset("trajfm-rope")
    assert (rope.positions.position, rope.output.head) == ("st-rope", "mixture")
    patch = load_preset("timesfm-patch")
    assert patch.patching.patch_out > patch.patching.patch_in > 1
    small = load_preset("trajgpt2-small")
    assert small.n_layer >= tut.n_layer and small.d_model >= tut.d_model
    assert load_preset("tutorial", dropout=0.0, block_size=16).block_size == 16


def test_unknown_preset_error_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model preset 'nope'.*tutorial"):
        load_preset("nope")


def test_bad_overrides_and_configs_are_rejected():
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        load_preset("tutorial", n_layers=3)
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="position must be one of"):
        GPTConfig.from_dict(dict(position="alibi"))
    with pytest.raises(ValueError, match="multiple of patch_in"):
        GPTConfig.from_dict(dict(block_size=30, patch_in=4))
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig.from_dict(dict(d_model=36, n_head=4, position="rope"))


def test_preset_from_json_path(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text('{"n_layer": 1, "n_head": 2, "d_model": 16, "block_size": 8}')
    assert load_preset(str(p)).d_model == 16


# --- structure -----------------------------------------------------------------------------


def test_transformer_keys_follow_gpt2_names():
    cfg = GPTConfig(n_layer=2, n_head=2, d_model=16, block_size=8)
    keys = set(TrajGPT(cfg).transformer.state_dict())
    expected = {"wpe.weight", "ln_f.weight", "ln_f.bias"}
    for i in range(2):
        for sub in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            expected |= {f"h.{i}.{sub}.weight", f"h.{i}.{sub}.bias"}
    assert keys == expected  # GPT2Model's keys minus wte


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    m = TrajGPT(GPTConfig(n_layer=8, n_head=4, d_model=128, block_size=16))
    fc = m.transformer.h[0].mlp.c_fc.weight.std().item()
    proj = m.transformer.h[0].mlp.c_proj.weight.std().item()
    assert fc == pytest.approx(0.02, rel=0.05)
    assert proj == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert m.transformer.h[0].attn.c_attn.bias.abs().sum() == 0


def test_longer_than_block_size_is_an_error(model):
    x = torch.zeros(1, 33, N_FEATURES)
    with pytest.raises(ValueError, match="block_size"):
        model(ModelInputs(x, torch.ones(1, 33, dtype=torch.bool)))


# --- causality and padding -----------------------------------------------------------------


def test_causal_later_points_never_change_earlier_outputs(model, windows):
    full = windows.mask.all(axis=1)
    x, mask = batch(windows, np.flatnonzero(full)[:4])
    with torch.no_grad():
        ref = model(ModelInputs(x, mask))
        for k in (1, 10, 31):
            x2 = x.clone()
            x2[:, k:] = torch.randn_like(x2[:, k:]) * 500
            out = model(ModelInputs(x2, mask))
            assert torch.equal(out[:, :k], ref[:, :k])
            assert not torch.allclose(out[:, k:], ref[:, k:])


def test_padding_never_changes_real_outputs_or_loss(model, windows):
    full = np.flatnonzero(windows.mask.all(axis=1))[:4]
    x, mask = batch(windows, full)
    mask = mask.clone()
    n_real = torch.tensor([32, 20, 7, 2])
    for i, n in enumerate(n_real):
        mask[i, n:] = False
    garbage = x.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), N_FEATURES) * 1e4
    nan = x.clone()
    nan[~mask] = float("nan")
    with torch.no_grad():
        ref = model(ModelInputs(x, mask))
        for other in (garbage, nan):
            out = model(ModelInputs(other, mask))
            assert torch.equal(out[mask], ref[mask])
            assert torch.isfinite(out).all()
            assert model.loss(other, mask) == model.loss(x, mask)
            assert torch.equal(model.predict_next(other, mask), model.predict_next(x, mask))
        # the same sequences without any padding give the same outputs
        for i, n in enumerate(n_real.tolist()):
            alone = model(ModelInputs(x[i : i + 1, :n], mask[i : i + 1, :n]))
            torch.testing.assert_close(alone[0], ref[i, :n], rtol=1e-5, atol=1e-5)


VARIANTS = [
    dict(position="rope"),
    dict(position="st-rope", head="mixture", n_mixture=3),
    dict(time_encoding="time2vec", space_encoding="sinusoidal", n_kinds=2),
    dict(patch_in=4, patch_out=8, position="st-rope", time_encoding="time2vec"),
    dict(norm="context", patch_in=4, patch_out=8, position="st-rope", head="mixture", n_mixture=3),
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items()))
def test_every_variant_is_causal_and_blind_to_padding(options, windows):
    """NaN or garbage in padded points (features and lon/lat) never reaches a real output."""
    torch.manual_seed(0)
    m = TrajGPT(GPTConfig.from_dict({**SMALL, **options}))
    st = stats_of(windows)
    m.set_normalization(st["mean"], st["std"])
    m.eval()
    full = np.flatnonzero(windows.mask.all(axis=1))[:3]
    x, mask = batch(windows, full)
    lonlat = torch.from_numpy(np.stack([windows.lon[full], windows.lat[full]], axis=-1))
    mask = mask.clone()
    mask[1, 20:] = False
    mask[2, 9:] = False
    nan_x, nan_ll = x.clone(), lonlat.clone()
    nan_x[~mask], nan_ll[~mask] = float("nan"), float("nan")
    P = m.config.patching.patch_in
    with torch.no_grad():
        ref = m(ModelInputs(x, mask, lonlat=lonlat))
        out = m(ModelInputs(nan_x, mask, lonlat=nan_ll))
        real_tokens = mask[:, P - 1 :: P]
        assert torch.equal(out[real_tokens], ref[real_tokens]) and torch.isfinite(out).all()
        assert m.loss(nan_x, mask, lonlat=nan_ll) == m.loss(x, mask, lonlat=lonlat)
        later = x.clone()
        later[:, 16:] = torch.randn_like(later[:, 16:]) * 300  # points 16.. change: tokens before stay
        out2 = m(ModelInputs(later, mask, lonlat=lonlat))
        n_before = 16 // P
        assert torch.equal(out2[:, :n_before], ref[:, :n_before])


def test_loss_counts_only_real_consecutive_pairs(model, windows):
    x, mask = batch(windows, slice(0, 5))
    mask = mask.clone()
    mask[0, 10:] = False
    mask[1, 1:] = False  # one real point: no pair
    with torch.no_grad():
        pred = model(ModelInputs(x, mask))
        target = (x[..., :N_TARGETS] - model.feat_mean[:N_TARGETS]) / model.feat_std[:N_TARGETS]
        errs = [
            ((pred[b, i] - target[b, i + 1]) ** 2) for b in range(5) for i in range(31) if mask[b, i] and mask[b, i + 1]
        ]
        manual = torch.stack(errs).mean()
        torch.testing.assert_close(model.loss(x, mask), manual)


def test_all_padding_rows_are_finite_and_carry_no_loss(model, windows):
    x, mask = batch(windows, slice(0, 3))
    mask = mask.clone()
    mask[1] = False
    model.train()  # gradients flow through the padded row too
    loss = model.loss(x, mask)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(ModelInputs(x, mask))).all()
        assert torch.isfinite(model.predict_next(x, mask)).all()
        keep = torch.tensor([0, 2])
        torch.testing.assert_close(model.loss(x, mask), model.loss(x[keep], mask[keep]))
        empty = torch.zeros_like(mask)
        assert model.loss(x, empty).item() == 0.0


# --- raw units in, raw units out -----------------------------------------------------------


def test_predict_next_returns_raw_units_at_last_real_point(model, windows):
    mean = [80.0, -60.0, math.log1p(60.0), 0, 0, 0, 0]
    std = [200.0, 150.0, 0.5, 1, 1, 1, 1]
    model.set_normalization(mean, std)
    x, mask = batch(windows, slice(0, 2))
    with torch.no_grad():
        pred_norm = model(ModelInputs(x, mask))
        mask = mask.clone()
        mask[1, 12:] = False
        nxt = model.predict_next(x, mask)
        raw = model(ModelInputs(x, mask))[1, 11] * torch.tensor(std[:3]) + torch.tensor(mean[:3])
        torch.testing.assert_close(nxt[1], raw)
        torch.testing.assert_close(nxt[0], pred_norm[0, -1] * torch.tensor(std[:3]) + torch.tensor(mean[:3]))
        # a head that outputs 0 (normalized) predicts exactly the mean step, in metres and log1p s
        model.head.weight.zero_()
        model.head.bias.zero_()
        torch.testing.assert_close(model.predict_next(x, mask), torch.tensor([mean[:3]] * 2))
    sd = model.state_dict()
    assert torch.equal(sd["feat_mean"], torch.tensor(mean, dtype=torch.float32))
    assert torch.equal(sd["feat_std"], torch.tensor(std, dtype=torch.float32))


def test_set_normalization_validates_and_guards_zero_std(model):
    with pytest.raises(ValueError, match="7 means"):
        model.set_normalization([0.0] * 3, [1.0] * 3)
    model.set_normalization([0.0] * 7, [0.0] + [2.0] * 6)
    assert model.feat_std[0] == 1.0 and model.feat_std[1] == 2.0


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip_weights_only(model, windows, tmp_path):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    x, mask = batch(windows, slice(0, 4))
    model.loss(x, mask).backward()
    opt.step()
    model.eval()
    path = save_checkpoint(
        tmp_path / "m.pt", model, opt, {"epoch": np.int64(3), "val": np.float32(0.5), "where": tmp_path}
    )
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["config"] == model.config.to_dict()
    assert raw["extra"] == {"epoch": 3, "val": 0.5, "where": str(tmp_path)}
    assert "optimizer" in raw
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(ModelInputs(x, mask)), model(ModelInputs(x, mask)))
        assert torch.equal(loaded.predict_next(x, mask), model.predict_next(x, mask))
    assert torch.equal(loaded.feat_mean, model.feat_mean)


def test_checkpoint_rejects_unsafe_extra_and_foreign_files(model, tmp_path):
    with pytest.raises(TypeError, match="weights_only"):
        save_checkpoint(tmp_path / "m.pt", model, extra={"fn": object()})
    assert not (tmp_path / "m.pt").exists()
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a trajfm checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


@pytest.mark.parametrize("preset", ["tutorial", "trajgpt2-small", "trajfm-rope", "timesfm-patch"])
def test_every_preset_trains_a_step_and_round_trips_weights_only(preset, windows, tmp_path):
    cfg = load_preset(preset, block_size=32, dropout=0.0)
    torch.manual_seed(0)
    m = TrajGPT(cfg)
    st = stats_of(windows)
    m.set_normalization(st["mean"], st["std"])
    x, mask = batch(windows)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    loss = m.loss(x, mask)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    loaded = load_model(save_checkpoint(tmp_path / "m.pt", m.eval()))
    assert loaded.config == cfg
    with torch.no_grad():
        assert torch.equal(loaded.predict(x, mask), m.predict(x, mask))
        assert loaded.predict(x, mask).shape == (len(windows), cfg.patching.patch_out, N_TARGETS)


def test_checkpoints_written_before_the_new_options_still_load(model, windows, tmp_path):
    """A config dict without the fields added for positions/heads/patching/encodings."""
    path = save_checkpoint(tmp_path / "old.pt", model)
    ckpt = torch.load(path, weights_only=True)
    old_fields = {"n_layer", "n_head", "d_model", "block_size", "dropout", "bias", "n_features", "n_targets"}
    ckpt["config"] = {k: v for k, v in ckpt["config"].items() if k in old_fields}
    assert set(ckpt["model"]) == set(model.state_dict())
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt")
    x, mask = batch(windows, slice(0, 3))
    with torch.no_grad():
        assert torch.equal(loaded(ModelInputs(x, mask)), model(ModelInputs(x, mask)))


def test_version_1_checkpoints_with_a_flat_config_are_converted(model, windows, tmp_path):
    """Checkpoints written before the sub-configs (version 1) held a flat config dict: it loads
    into the nested config, with the same weights and outputs."""
    path = save_checkpoint(tmp_path / "v2.pt", model)
    ckpt = torch.load(path, weights_only=True)
    flat = {k: v for k, v in ckpt["config"].items() if not isinstance(v, dict)}
    for sub in ckpt["config"].values():
        flat.update(sub if isinstance(sub, dict) else {})
    torch.save({**ckpt, "version": 1, "config": {**flat, "head": "mse"}}, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["config"] == model.config.to_dict()
    loaded = load_model(tmp_path / "v1.pt")
    assert loaded.config == model.config
    x, mask = batch(windows, slice(0, 3))
    with torch.no_grad():
        assert torch.equal(loaded(ModelInputs(x, mask)), model(ModelInputs(x, mask)))
    torch.save({**ckpt, "version": 1, "config": {**flat, "heads": "mse"}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="version 1 checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("options", VARIANTS[:2], ids=["rope", "st-rope+mixture"])
def test_bf16_autocast_trains_and_generates_with_a_cache(options, windows):
    """What CUDA training uses (bf16 autocast), checked on the CPU: finite loss and gradients,
    and cached generation close to float32."""
    from trajfm.model import Rollout

    torch.manual_seed(0)
    m = TrajGPT(GPTConfig.from_dict({**SMALL, **options}))
    st = stats_of(windows)
    m.set_normalization(st["mean"], st["std"])
    x, mask = batch(windows, slice(0, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = m.loss(x, mask)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    n = torch.tensor([10, 20, 5, 31])
    ref = Rollout(m, x, n).predict()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        state = Rollout(m, x, n)
        state.extend(x[:, :1])
        low = Rollout(m, x, n).predict()
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=5.0)  # metres: bf16 keeps ~3 digits
