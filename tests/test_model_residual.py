"""Head frames (trajfm/model/targets.py): constant-velocity anchor, heading frame, Huber loss."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import seeded_model, zero_head
from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
    straight_track,
    windows_from_tracks,
)
from trajfm.evaluate.forecast import evaluate_forecast, rollout
from trajfm.geo import haversine_m
from trajfm.model import GPTConfig, TrajGPT, load_model, load_preset, save_checkpoint, targets
from trajfm.model.config import TargetConfig
from trajfm.model.inputs import ModelInputs

SMALL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)
FRAMES = [("velocity", "absolute"), ("velocity", "heading"), ("none", "heading")]


@pytest.fixture(scope="module")
def windows():
    return make_windows(n_tracks=8, points=60, window=32, seed=5, stride=16)


def make_model(windows, seed=0, **cfg):
    return seeded_model(windows, seed, **{**SMALL, **cfg}).eval()


def test_defaults_keep_the_plain_targets():
    for name in ("tutorial", "trajgpt2-small", "trajfm-rope", "timesfm-patch"):
        cfg = load_preset(name)
        assert (cfg.target.anchor, cfg.target.frame, cfg.output.point_loss, cfg.infilling.objective) == (
            "none",
            "absolute",
            "mse",
            "next",
        )
        assert targets.is_plain(cfg)
    with pytest.raises(ValueError, match="anchor must be one of"):
        GPTConfig.from_dict(dict(anchor="acceleration"))
    with pytest.raises(ValueError, match="frame must be one of"):
        GPTConfig.from_dict(dict(frame="polar"))
    with pytest.raises(ValueError, match="huber_delta"):
        GPTConfig.from_dict(dict(point_loss="huber", huber_delta=0.0))


@pytest.mark.parametrize("step_scale", ["std", "speed"])
@pytest.mark.parametrize("anchor,frame", FRAMES)
def test_encode_decode_round_trip(anchor, frame, step_scale):
    cfg = GPTConfig.from_dict(dict(anchor=anchor, frame=frame, step_scale=step_scale))
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([0.5, -1.0, 4.1, 0, 0, 0, 0]), torch.tensor([160.0, 170.0, 0.25, 1, 1, 1, 1])
    target = torch.randn(50, 4, 3, generator=g) * torch.tensor([300.0, 300.0, 0.3]) + torch.tensor([0, 0, 4.1])
    cur = torch.randn(50, 1, 7, generator=g) * 300.0
    cur[:5, :, :2] = 0.1  # no heading: north is used
    z = targets.encode(cfg, target, cur, mean, std)
    assert torch.allclose(targets.decode(cfg, z, cur, mean, std), target, atol=1e-3)
    assert torch.equal(z[..., 2], (target[..., 2] - mean[2]) / std[2])  # time is never re-framed


def test_heading_frame_is_rotation_invariant():
    cfg = GPTConfig.from_dict(dict(anchor="velocity", frame="heading"))
    mean, std = torch.zeros(7), torch.ones(7) * 150.0
    cur = torch.tensor([[200.0, 50.0, 4.1, 0, 0, 0, 0]])
    target = torch.tensor([[230.0, 120.0, 4.1]])  # turning to the left
    a = math.radians(73.0)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    cur2, target2 = cur.clone(), target.clone()
    cur2[:, :2], target2[:, :2] = cur[:, :2] @ rot.T, target[:, :2] @ rot.T
    z1, z2 = targets.encode(cfg, target, cur, mean, std), targets.encode(cfg, target2, cur2, mean, std)
    assert torch.allclose(z1, z2, atol=1e-5)
    assert z1[0, 1] > 0  # left of the heading is positive


@pytest.mark.parametrize(
    "anchor,frame,step_scale",
    [("velocity", "absolute", "std"), ("velocity", "heading", "std"), ("velocity", "heading", "speed")],
)
def test_zero_output_is_constant_velocity(windows, anchor, frame, step_scale):
    model = zero_head(make_model(windows, anchor=anchor, frame=frame, step_scale=step_scale))
    m = evaluate_forecast(model, windows, context_len=12, horizon=8)
    assert m["n_windows"] > 0
    assert m["ade_m"] == pytest.approx(m["cv_ade_m"], abs=0.05)  # float32 features vs float64 fixes
    assert m["fde_m"] == pytest.approx(m["cv_fde_m"], abs=0.1)


@pytest.mark.parametrize("anchor,frame", FRAMES)
def test_cache_rollout_equals_recompute(windows, anchor, frame):
    model = make_model(windows, anchor=anchor, frame=frame)
    with torch.no_grad():
        model.head.bias.normal_(0, 0.3)  # a head that does not predict constant velocity
    a = rollout(model, windows, 10, 12, use_cache=True)
    b = rollout(model, windows, 10, 12, use_cache=False)
    assert haversine_m(a[0], a[1], b[0], b[1]).max() < 0.05  # metres after 12 steps: float rounding only


@pytest.mark.parametrize("head", ["mse", "mixture"])
@pytest.mark.parametrize("anchor,frame", FRAMES)
def test_padding_never_changes_the_loss_or_its_gradients(windows, head, anchor, frame):
    model = make_model(windows, anchor=anchor, frame=frame, head=head, n_mixture=2)
    x, mask = torch.from_numpy(windows.x[:6]).clone(), torch.from_numpy(windows.mask[:6]).clone()
    mask[:, 20:] = False
    ref = model.loss(x, mask)
    x2 = x.clone()
    x2[~mask] = float("nan")
    model.zero_grad()
    loss = model.loss(x2, mask)
    loss.backward()
    assert torch.equal(loss.detach(), ref.detach())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_patched_model_predicts_from_the_last_point(windows):
    """P = 4, Q = 8 with an anchor: a zero head repeats the last real point's step."""
    model = zero_head(make_model(windows, anchor="velocity", patch_in=4, patch_out=8))
    x, mask = torch.from_numpy(windows.x[:5, :15]), torch.ones(5, 15, dtype=torch.bool)  # 15: not whole patches
    pred = model.predict(x, mask)  # (B, Q, T)
    assert pred.shape == (5, 8, 3)
    assert torch.allclose(pred[..., :2], x[:, None, 14, :2].expand(5, 8, 2), atol=1e-3)


def test_huber_loss_is_robust_to_an_outlier(windows):
    x, mask = torch.from_numpy(windows.x[:4]).clone(), torch.from_numpy(windows.mask[:4])
    mse, hub = make_model(windows), make_model(windows, point_loss="huber")
    with torch.no_grad():
        base_mse, base_hub = float(mse.loss(x, mask)), float(hub.loss(x, mask))
        x[0, 10, 0] += 50_000.0  # a 50 km GPS jump
        assert float(mse.loss(x, mask)) / base_mse > 10 * float(hub.loss(x, mask)) / base_hub
    assert base_hub < base_mse  # 0.5 x^2 below delta: half the MSE for small errors


def test_anchored_checkpoint_round_trip_and_old_configs_load(windows, tmp_path):
    model = make_model(windows, anchor="velocity", frame="heading", point_loss="huber")
    path = save_checkpoint(tmp_path / "m.pt", model)
    back = load_model(path)
    assert back.config == model.config
    x, mask = torch.from_numpy(windows.x[:3, :16]), torch.from_numpy(windows.mask[:3, :16])
    assert torch.equal(back.predict(x, mask), model.predict(x, mask))
    assert back.config.to_dict()["target"]["anchor"] == "velocity"


def test_config_dicts_are_nested_and_flat_names_map_into_them():
    """``to_dict`` is nested (the core sizes, one dict per sub-config, every field), loads back to
    the same config, and flat field names given to ``from_dict`` land in their sub-config."""
    tut = load_preset("tutorial")
    d = tut.to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(GPTConfig)}
    assert set(d["target"]) == {f.name for f in dataclasses.fields(TargetConfig)}
    assert GPTConfig.from_dict(d) == tut
    assert GPTConfig.from_dict({**SMALL, "objective": "mixed"}).to_dict()["infilling"]["objective"] == "mixed"
    nested = GPTConfig.from_dict({**SMALL, "infilling": {"objective": "mixed"}})
    assert nested == GPTConfig.from_dict({**SMALL, "objective": "mixed"})
    assert tut.with_overrides(target={"anchor": "velocity"}) == tut.with_overrides(anchor="velocity")
    assert load_preset("tutorial", head="mixture").output == load_preset("tutorial", output={"head": "mixture"}).output
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({"target": {"head": "mse"}})


def test_anchor_learns_straight_lines_faster_than_the_plain_head():
    """Constant-velocity tracks: an anchored head starts near the answer; after the same 15 steps
    it forecasts far better than the tutorial's plain head."""
    tracks = [(f"s{i}", *straight_track(32, 150.0 + 20 * i, -80.0 + 15 * i, 60_000_000_000)) for i in range(8)]
    ws = windows_from_tracks(tracks, window=32)
    x, mask = torch.from_numpy(ws.x), torch.from_numpy(ws.mask)
    ade = {}
    for anchor in ("none", "velocity"):
        model = make_model(ws, anchor=anchor).train()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(15):
            loss = model.loss(x, mask)
            opt.zero_grad()
            loss.backward()
            opt.step()
        ade[anchor] = evaluate_forecast(model.eval(), ws, context_len=16, horizon=10)["ade_m"]
    assert ade["velocity"] < ade["none"] / 3  # measured: ~20 m vs ~130 m (steps of 150-300 m)


# --- turn_inputs: steps in the frame of the step before -------------------------------------


def test_turn_frame_steps_read_speed_and_turn_whatever_the_heading():
    from trajfm.model.embeddings import turn_frame_steps

    a = math.radians(40.0)
    steps = torch.tensor([[[0.0, 0.0], [100.0, 0.0], [100.0, 10.0], [0.3, 0.2], [0.0, 50.0]]])
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    x = torch.cat([steps, torch.zeros(1, 5, 5)], dim=-1)
    x2 = torch.cat([steps @ rot.T, torch.zeros(1, 5, 5)], dim=-1)
    mask = torch.ones(1, 5, dtype=torch.bool)
    r1, r2 = turn_frame_steps(x, mask), turn_frame_steps(x2, mask)
    torch.testing.assert_close(r1, r2, atol=1e-4, rtol=0)
    torch.testing.assert_close(r1[0, 1], torch.tensor([100.0, 0.0]))  # no step before: its own heading
    torch.testing.assert_close(r1[0, 2], torch.tensor([100.0, 10.0]))  # 10 m to the left of east
    torch.testing.assert_close(r1[0, 4], torch.tensor([50.0, 0.0]))  # stopped before: its own heading
    prev = torch.tensor([[0.0, -30.0]])  # heading south before the first step
    torch.testing.assert_close(
        turn_frame_steps(x[:, 1:], mask[:, 1:], prev)[0, 0], torch.tensor([0.0, 100.0])
    )  # east = left


def test_turn_inputs_cache_padding_and_checkpoint(windows, tmp_path):
    model = make_model(windows, turn_inputs=True, length_input=True, anchor="velocity", frame="heading")
    assert model.in_proj.weight.shape[1] == model.config.n_features + 3
    with torch.no_grad():
        model.head.bias.normal_(0, 0.3)
    a = rollout(model, windows, 10, 12, use_cache=True)
    b = rollout(model, windows, 10, 12, use_cache=False)
    assert haversine_m(a[0], a[1], b[0], b[1]).max() < 0.05
    x, mask = torch.from_numpy(windows.x[:4]).clone(), torch.from_numpy(windows.mask[:4]).clone()
    mask[:, 20:] = False
    ref = model(ModelInputs(x, mask))[:, :20]
    x[:, 20:] = float("nan")
    torch.testing.assert_close(model(ModelInputs(x, mask))[:, :20], ref, rtol=0, atol=0)
    back = load_model(save_checkpoint(tmp_path / "t.pt", model))
    assert torch.equal(back(ModelInputs(x, mask))[:, :20], ref)


# --- distance loss and position scoring --------------------------------------------------------


def test_distance_loss_is_the_smoothed_length_of_the_error():
    from trajfm.model.heads import head_loss

    cfg = GPTConfig.from_dict(dict(point_loss="distance", huber_delta=0.1))
    out = torch.tensor([[[[3.0, 4.0, 0.5]], [[0.0, 0.0, 0.0]]]])  # (B=1, Lt=2, Q=1, T=3)
    target = torch.zeros_like(out)
    valid = torch.tensor([[[True], [False]]])
    expected = (math.sqrt(25 + 0.01) - 0.1) + (math.sqrt(0.25 + 0.01) - 0.1)
    assert float(head_loss(cfg, out, target, valid)) == pytest.approx(expected, rel=1e-6)
    far = head_loss(cfg, out * 100, target, valid)  # linear beyond delta, not quadratic
    assert float(far) == pytest.approx(500 + 50 - 0.2, rel=1e-5)


def test_score_positions_sums_the_step_errors():
    from trajfm.model.heads import head_loss

    cfg = GPTConfig.from_dict(dict(patch_out=3, score_positions=True))
    out = torch.zeros(1, 1, 3, 3)
    target = torch.tensor([[[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-2.0, 0.0, 0.0]]]])  # back where it started
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    # positions reached: 1, 2, 0 -> squared errors 1, 4, 0 over 3 points x 3 targets
    assert float(head_loss(cfg, out, target, valid)) == pytest.approx(5 / 9)
    assert float(head_loss(GPTConfig.from_dict(dict(patch_out=3)), out, target, valid)) == pytest.approx(6 / 9)
    valid[..., 2] = False  # the third point is past the window
    assert float(head_loss(cfg, out, target, valid)) == pytest.approx(5 / 6)


def test_length_input_tells_jitter_from_drift():
    from trajfm.model.embeddings import extra_inputs

    cfg = GPTConfig.from_dict(dict(length_input=True))
    x = torch.zeros(1, 4, 7)
    x[0, :, :2] = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 20.0], [160.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    v = extra_inputs(cfg, x, mask, torch.tensor(160.0))[0, :, 0]
    assert v[0] == 0 and v[3] == 0  # no step; padding
    assert 0.15 < v[1] < 0.25 and 0.55 < v[2] < 0.65  # log1p(2) / log1p(160), log1p(20) / log1p(160)
    assert GPTConfig.from_dict(dict(length_input=True, turn_inputs=True)).n_inputs == 10


def test_point_losses_belong_to_the_regression_head():
    with pytest.raises(ValueError, match="head 'mse'"):
        GPTConfig.from_dict(dict(head="mixture", point_loss="distance"))
    with pytest.raises(ValueError, match="head 'mse'"):
        GPTConfig.from_dict(dict(head="mixture", patch_out=4, score_positions=True))


def test_forecast_preset_loads_and_forecasts_points(windows):
    from synthetic_tracks import track_frame, vessel_track
    from trajfm.evaluate.forecast import forecast_points

    cfg = load_preset("trajfm-forecast")
    assert (
        cfg.target.anchor,
        cfg.target.frame,
        cfg.patching.patch_out,
        cfg.inputs.turn_inputs,
        cfg.inputs.length_input,
    ) == (
        "velocity",
        "heading",
        10,
        True,
        True,
    )
    assert cfg.inputs.space_encoding == "sinusoidal" and cfg.infilling.objective == "next"
    small = load_preset("trajfm-forecast", n_layer=1, d_model=32, n_head=2, block_size=32)
    torch.manual_seed(0)
    model = TrajGPT(small)
    st = stats_of(windows)
    model.set_normalization(st["mean"], st["std"])
    rng = np.random.default_rng(0)
    points = track_frame([(f"v{i}", *vessel_track(rng, 25 + 5 * i)) for i in range(3)])
    out = forecast_points(model, points, horizon=12)  # 10 points per call, then 2 more
    assert len(out) == 36 and np.isfinite(out[["lon", "lat"]].to_numpy()).all()
    assert (out.groupby("traj_id")["t"].diff().dropna() > pd.Timedelta(0)).all()


def test_speed_scale_measures_corrections_in_units_of_the_current_step():
    cfg = GPTConfig.from_dict(dict(anchor="velocity", frame="heading", step_scale="speed", step_scale_floor_m=10.0))
    mean, std = torch.zeros(7), torch.full((7,), 160.0)
    cur = torch.tensor([[0.0, 2.0, 4.1, 0, 0, 0, 0], [300.0, 0.0, 4.1, 0, 0, 0, 0]])  # moored; 300 m east per step
    target = torch.tensor([[0.0, 0.0, 4.1], [300.0, 31.0, 4.1]])  # stops; turns 31 m to the left
    z = targets.encode(cfg, target, cur, mean, std)
    torch.testing.assert_close(z[:, :2], torch.tensor([[-2.0 / 12.0, 0.0], [0.0, 0.1]]))
    torch.testing.assert_close(targets.decode(cfg, z, cur, mean, std), target)
    with pytest.raises(ValueError, match="step_scale must be one of"):
        GPTConfig.from_dict(dict(step_scale="log"))
