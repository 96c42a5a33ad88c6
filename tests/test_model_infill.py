"""Masked-span infilling (trajfm/model/infill.py): sequences, loss, causality, padding, recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import seeded_model
from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    straight_track,
    windows_from_tracks,
)
from trajfm.geo import haversine_m
from trajfm.model import GPTConfig, TrajGPT, load_model, save_checkpoint
from trajfm.model.infill import build_sequences, infill, infill_loss, linear_interpolation, sample_spans
from trajfm.model.inputs import TYPE_ANS, TYPE_MASK, TYPE_NO_TIME, TYPE_POINT, TYPE_SEP, ModelInputs
from trajfm.model.positions import point_coords

SMALL = dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0)


@pytest.fixture(scope="module")
def windows():
    return make_windows(n_tracks=10, points=60, window=24, seed=7, stride=12)


def make_model(ws, seed=0, **cfg):
    return seeded_model(ws, seed, **{**SMALL, "objective": "infill", **cfg}).eval()


def perturbed(ws, rows_cols, rng):
    """A copy of ``ws`` with garbage written at the given (row, column) index arrays."""
    out = ws.subset(np.arange(len(ws)))
    out.x = out.x.copy()
    out.lon, out.lat, out.t_ns = out.lon.copy(), out.lat.copy(), out.t_ns.copy()
    r, c = rows_cols
    out.x[r, c] = rng.normal(0, 500, (len(r), out.x.shape[2])).astype(np.float32)
    out.lon[r, c] += rng.normal(0, 0.05, len(r))
    out.lat[r, c] += rng.normal(0, 0.05, len(r))
    return out


# --- configuration -------------------------------------------------------------------------


def test_objective_config_and_tokens():
    assert GPTConfig().infilling.objective == "next" and not hasattr(TrajGPT(GPTConfig.from_dict(SMALL)), "special")
    assert TrajGPT(GPTConfig.from_dict(dict(**SMALL, objective="mixed"))).special.weight.shape == (5, 32)
    with pytest.raises(ValueError, match="objective must be one of"):
        GPTConfig.from_dict(dict(objective="bert"))
    with pytest.raises(ValueError, match="patch_in = 1"):
        GPTConfig.from_dict(dict(objective="infill", patch_in=4, block_size=32))
    with pytest.raises(ValueError, match="infill_min_span"):
        GPTConfig.from_dict(dict(objective="infill", infill_min_span=5, infill_max_span=2))


def test_next_models_refuse_to_infill(windows):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="not trained to infill"):
        infill(TrajGPT(GPTConfig.from_dict(SMALL)), windows, (3, 6))


def test_spans_are_interior_within_bounds_and_reproducible():
    cfg = GPTConfig.from_dict(dict(objective="infill", infill_min_span=2, infill_max_span=6, infill_time_prob=0.5))
    n = torch.tensor([2, 3, 4, 5, 9, 24, 30] * 50)
    s, e, hide = sample_spans(n, cfg, torch.Generator().manual_seed(1))
    ok = n >= 3
    assert (s[~ok] == 0).all() and (e[~ok] == 0).all() and not hide[~ok].any()
    s, e, n = s[ok], e[ok], n[ok]
    assert (s >= 1).all() and (e > s).all() and (e <= n - 1).all()
    m = e - s
    assert (m <= 6).all() and ((m >= 2) | (m == n - 2)).all()
    long_rows = n >= 30
    assert set(m[long_rows].tolist()) == {2, 3, 4, 5, 6}  # every allowed length occurs
    assert 0.3 < hide.float().mean() < 0.7
    again = sample_spans(torch.tensor([2, 3, 4, 5, 9, 24, 30] * 50), cfg, torch.Generator().manual_seed(1))
    assert torch.equal(again[0][ok], s) and torch.equal(again[1][ok], e)


# --- the sequence ------------------------------------------------------------------------


def test_sequence_layout_gap_step_targets_and_coordinates(windows):
    x = torch.from_numpy(windows.x[:1, :10]).clone()
    mask = torch.ones(1, 10, dtype=torch.bool)
    mean = torch.zeros(7)
    seq = build_sequences(x, mask, torch.tensor([3]), torch.tensor([6]), torch.tensor([False]), mean)
    P, M, S, A = TYPE_POINT, TYPE_MASK, TYPE_SEP, TYPE_ANS
    assert seq.types[0].tolist() == [P, P, P, M, P, P, P, P, S, A, A, A]  # x0 x1 x2 [M] x6' x7 x8 x9 [S] x3 x4 x5
    assert seq.mask.all() and seq.sep.tolist() == [8]
    gap = x[0, 3:7, :2].sum(0)  # steps 3..6 add up to the step from point 2 to point 6
    torch.testing.assert_close(seq.x[0, 4, :2], gap)
    dt = torch.expm1(x[0, 3:7, 2].double()).sum()
    torch.testing.assert_close(torch.expm1(seq.x[0, 4, 2].double()), dt, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(seq.x[0, 5:8], x[0, 7:10])
    torch.testing.assert_close(seq.x[0, 9:12], x[0, 3:6])
    assert seq.valid[0].tolist() == [False] * 8 + [True] * 4
    torch.testing.assert_close(seq.target[0, 8:12], x[0, 3:7, :3])  # SEP -> x3, x3 -> x4, x4 -> x5, x5 -> x6
    torch.testing.assert_close(seq.cur[0, 8:12, 2:], x[0, 2:6, 2:])  # each predicted from the point before,
    pace = torch.stack([x[0, k:7, :2].sum(0) / (7 - k) for k in (3, 4, 5, 6)])  # anchored on the even pace to x6
    torch.testing.assert_close(seq.cur[0, 8:12, :2], pace)
    assert seq.left[0, 8:12].tolist() == [4, 3, 2, 1] and (seq.left[0, :8] == 0).all()
    # Every token sits where its point is (MASK and SEP at point 2).
    orig = point_coords(x, mask)[0]
    torch.testing.assert_close(seq.coords[0, [0, 1, 2, 3]], orig[[0, 1, 2, 2]])
    torch.testing.assert_close(seq.coords[0, 4:8, :2], orig[6:10, :2], rtol=0, atol=0.05)
    torch.testing.assert_close(seq.coords[0, 8:12], orig[[2, 3, 4, 5]])


def test_hidden_time_hides_the_gap_duration_and_later_calendars(windows):
    x = torch.from_numpy(windows.x[:1, :10]).clone()
    mean = torch.tensor([1.0, 2.0, 4.1, 0.0, 0.0, 0.0, 0.0])
    seq = build_sequences(
        x, torch.ones(1, 10, dtype=torch.bool), torch.tensor([3]), torch.tensor([6]), torch.tensor([True]), mean
    )
    assert seq.types[0, 4:8].tolist() == [TYPE_NO_TIME] * 4
    assert float(seq.x[0, 4, 2]) == pytest.approx(4.1)  # the mean: 0 after normalization
    assert (seq.x[0, 4:8, 3:] == 0).all()  # no calendar after the gap
    torch.testing.assert_close(seq.x[0, 5:8, :3], x[0, 7:10, :3])  # the steps after the gap stay
    assert (seq.coords[0, 4:8, 2] < seq.coords[0, 2, 2] + 3 * 70).all()  # the gap took no time
    torch.testing.assert_close(seq.x[0, 9:12], x[0, 3:6])  # answers keep their times (teacher forcing)


# --- causality and padding -------------------------------------------------------------------


def test_part_a_never_sees_the_hidden_points(windows):
    """The gap step comes from the fixes at both ends: nothing else of the span is read."""
    model = make_model(windows, position="st-rope")
    rng = np.random.default_rng(0)
    rows = np.arange(len(windows))
    a = infill(model, windows, (6, 11), hide_time=True)
    hidden = (np.repeat(rows, 5), np.tile(np.arange(6, 11), len(rows)))
    b = infill(model, perturbed(windows, hidden, rng), (6, 11), hide_time=True)
    assert np.array_equal(a.lon, b.lon) and np.array_equal(a.lat, b.lat)
    assert np.array_equal(a.t_ns, b.t_ns) and np.array_equal(a.travel_time_s, b.travel_time_s)


def test_answers_are_causal(windows):
    model = make_model(windows, seed=1)
    x, mask = torch.from_numpy(windows.x[:4, :16]), torch.ones(4, 16, dtype=torch.bool)
    seq = build_sequences(
        x, mask, torch.full((4,), 4), torch.full((4,), 10), torch.zeros(4, dtype=torch.bool), model.feat_mean
    )
    with torch.no_grad():
        ref = model(ModelInputs(seq.x, seq.mask, coords=seq.coords, types=seq.types))
        for k in (int(seq.sep[0]) + 1, int(seq.sep[0]) + 4):
            x2 = seq.x.clone()
            x2[:, k:] = torch.randn_like(x2[:, k:]) * 300
            out = model(ModelInputs(x2, seq.mask, coords=seq.coords, types=seq.types))
            torch.testing.assert_close(out[:, :k], ref[:, :k])


def test_time_is_hidden_from_travel_time_estimation(windows):
    """With hide_time, shifting when the far end was reached (and every later time) changes nothing."""
    model = make_model(windows, seed=2, position="st-rope", time_encoding="time2vec")
    a = infill(model, windows, (5, 9), hide_time=True)
    later = windows.subset(np.arange(len(windows)))
    later.t_ns = later.t_ns.copy()
    later.t_ns[:, 9:] += 3_600 * 10**9  # an hour later
    later.x = later.x.copy()
    later.x[:, 9:, 3:] = np.random.default_rng(1).normal(size=later.x[:, 9:, 3:].shape)  # other calendars
    b = infill(model, later, (5, 9), hide_time=True)
    np.testing.assert_array_equal(a.travel_time_s, b.travel_time_s)
    c = infill(model, later, (5, 9), hide_time=False)  # shown, the gap's hour is read
    assert not np.array_equal(a.travel_time_s, c.travel_time_s)


@pytest.mark.parametrize("position", ["learned", "st-rope"])
def test_padding_never_changes_infilling(windows, position):
    model = make_model(windows, position=position, head="mixture", n_mixture=2)
    short = windows.subset(np.arange(len(windows)))
    short.mask = short.mask.copy()
    short.mask[:, 18:] = False  # 18 real points, 6 padded
    rng = np.random.default_rng(3)
    rows = np.repeat(np.arange(len(short)), 6)
    garbage = perturbed(short, (rows, np.tile(np.arange(18, 24), len(short))), rng)
    garbage.x[:, 18:] = np.nan
    a, b = infill(model, short, (4, 12)), infill(model, garbage, (4, 12))
    assert np.array_equal(a.lon, b.lon) and np.array_equal(a.travel_time_s, b.travel_time_s)
    x, mask = torch.from_numpy(short.x), torch.from_numpy(short.mask)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ref = infill_loss(model, x, mask, generator=g())
    model.zero_grad()
    loss = infill_loss(model, torch.from_numpy(garbage.x), mask, generator=g())
    loss.backward()
    assert torch.equal(loss.detach(), ref.detach())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- training and recovery ---------------------------------------------------------------------


def test_loss_is_deterministic_in_eval_and_follows_the_global_rng_in_training(windows):
    model = make_model(windows)
    x, mask = torch.from_numpy(windows.x), torch.from_numpy(windows.mask)
    with torch.no_grad():
        assert torch.equal(model.loss(x, mask), model.loss(x, mask))  # eval: a fixed seed
        model.train()
        torch.manual_seed(9)
        a = model.loss(x, mask)
        torch.manual_seed(9)
        assert torch.equal(model.loss(x, mask), a)  # training: the (checkpointed) global RNG
        assert not torch.equal(model.loss(x, mask), a)


@pytest.mark.parametrize("objective", ["infill", "mixed"])
def test_infill_loss_trains_down(windows, objective):
    model = make_model(windows, objective=objective)
    x, mask = torch.from_numpy(windows.x), torch.from_numpy(windows.mask)
    before = float(infill_loss(model, x, mask).detach())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(40):
        loss = model.loss(x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = float(infill_loss(model.eval(), x, mask).detach())
    assert after < 0.5 * before


def test_straight_span_is_recovered_near_the_line():
    """Straight tracks: reconstructions are finite, in order, between the ends and near the true
    points; linear interpolation, the baseline, is exact here."""
    tracks = [(f"s{i}", *straight_track(24, 120.0 + 25 * i, 200.0 - 30 * i, 60_000_000_000)) for i in range(12)]
    ws = windows_from_tracks(tracks, window=24)
    model = make_model(ws, anchor="velocity", frame="heading", infill_max_span=6)
    x, mask = torch.from_numpy(ws.x), torch.from_numpy(ws.mask)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(0)
    for _ in range(30):
        loss = model.loss(x, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    span = (8, 13)
    res = infill(model.eval(), ws, span)
    true_lon, true_lat = ws.lon[:, 8:13], ws.lat[:, 8:13]
    assert res.span_mask.all() and np.isfinite(res.lon).all() and np.isfinite(res.lat).all()
    err = haversine_m(res.lon, res.lat, true_lon, true_lat)
    step = np.hypot(ws.x[:, 1, 0], ws.x[:, 1, 1])  # metres per step
    assert (err.mean(1) < 0.5 * step).all()  # measured: ~0.05 of a step
    assert (np.diff(res.t_ns, axis=1) > 0).all() and (res.t_ns[:, 0] > ws.t_ns[:, 7]).all()
    assert np.abs(res.travel_time_s - 360.0).max() < 60.0  # 6 gaps of 60 s
    lin_lon, lin_lat = linear_interpolation(ws, span)
    assert haversine_m(lin_lon, lin_lat, true_lon, true_lat).max() < 1.0


def test_ragged_spans_and_travel_time(windows):
    model = make_model(windows, seed=3)
    spans = np.array([[1 + i % 5, 3 + i % 5 + i % 4] for i in range(len(windows))])
    res = infill(model, windows, spans, hide_time=True)
    lengths = spans[:, 1] - spans[:, 0]
    assert res.lon.shape == (len(windows), lengths.max())
    assert (res.span_mask.sum(1) == lengths).all()
    assert np.isnan(res.lon[~res.span_mask]).all() and np.isfinite(res.lon[res.span_mask]).all()
    assert (res.travel_time_s > 0).all() and np.isfinite(res.travel_time_s).all()
    with pytest.raises(ValueError, match="1 <= start < end <= n - 1"):
        infill(model, windows, (0, 3))
    with pytest.raises(ValueError, match="1 <= start < end <= n - 1"):
        infill(model, windows, (5, 24))


def test_infill_model_checkpoint_round_trip(windows, tmp_path):
    model = make_model(windows, objective="mixed")
    back = load_model(save_checkpoint(tmp_path / "m.pt", model))  # weights_only=True
    assert "special.weight" in back.state_dict()
    a, b = infill(model, windows, (3, 7)), infill(back, windows, (3, 7))
    assert np.array_equal(a.lon, b.lon) and np.array_equal(a.t_ns, b.t_ns)


@pytest.mark.parametrize("frame", ["absolute", "heading"])
def test_a_zero_anchored_head_is_linear_interpolation(windows, frame):
    """Anchored on the even-pace step, a head that outputs 0 reproduces the baseline."""
    model = make_model(windows, anchor="velocity", frame=frame)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    span = np.array([[2 + i % 6, 5 + i % 6 + i % 5] for i in range(len(windows))])
    res = infill(model, windows, span)
    lin_lon, lin_lat = linear_interpolation(windows, span)
    ok = res.span_mask
    assert haversine_m(res.lon[ok], res.lat[ok], lin_lon[ok], lin_lat[ok]).max() < 0.5  # metres
