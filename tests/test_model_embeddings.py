"""Optional encodings: Time2Vec of elapsed time and time of week, multi-scale sinusoidal absolute
position (float64 phases), mover kind; and their plumbing through training and forecasting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
    track_frame,
    vessel_track,
)
from trajfm.evaluate import forecast_points
from trajfm.features.encode import calendar_features, encode_points
from trajfm.geo import offset_lonlat
from trajfm.model import GPTConfig, TrajGPT
from trajfm.model.embeddings import SpaceEncoding, Time2Vec, time_scalars
from trajfm.model.inputs import ModelInputs
from trajfm.model.positions import point_coords
from trajfm.train import TrainConfig, train

MONDAY_UTC_NS = 1_593_388_800_000_000_000  # 2020-06-29 00:00 UTC, a Monday


def small(ws, **kw) -> TrajGPT:
    torch.manual_seed(0)
    m = TrajGPT(GPTConfig.from_dict(dict(n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0, **kw)))
    st = stats_of(ws)
    m.set_normalization(st["mean"], st["std"])
    return m.eval()


def test_time_scalars_read_elapsed_hours_and_solar_hour_of_week():
    t_ns = MONDAY_UTC_NS + np.array([0, 1800, 7200, 30 * 3600], dtype=np.int64) * 1_000_000_000
    lon = np.array([0.0, 0.0, 0.0, 0.0])
    x = torch.from_numpy(encode_points(lon, np.full(4, 10.0), t_ns))[None]
    mask = torch.ones(1, 4, dtype=torch.bool)
    tau = time_scalars(x, point_coords(x, mask))[0]  # (4, 2)
    np.testing.assert_allclose(tau[:, 0].numpy(), [0.0, 0.5, 2.0, 30.0], atol=1e-4)  # hours since start
    np.testing.assert_allclose(tau[:, 1].numpy(), [0.0, 0.5, 2.0, 30.0], atol=1e-3)  # Monday 00:00 = hour 0
    # 90 degrees east the sun is 6 hours ahead: local solar time, no time zone database
    east = torch.from_numpy(calendar_features(t_ns[:1], np.array([90.0])).astype(np.float32))
    x2 = x.clone()
    x2[0, 0, 3:] = east[0]
    assert time_scalars(x2, point_coords(x2, mask))[0, 0, 1].item() == pytest.approx(6.0, abs=1e-3)


def test_time2vec_has_one_linear_and_periodic_terms():
    t2v = Time2Vec(2, 8)
    tau = torch.tensor([[[1.0, 24.0], [2.0, 48.0]]])
    z = t2v(tau)  # (1, 2, 16)
    assert z.shape == (1, 2, 16)
    lin = z[0, :, 0]
    assert (lin[1] - lin[0]).item() == pytest.approx(t2v.w[0, 0].item())  # linear in tau
    assert z[..., 1:8].abs().max() <= 1.0


def test_space_encoding_is_smooth_at_metre_scale_far_from_the_origin():
    enc = SpaceEncoding(
        GPTConfig.from_dict(dict(space_encoding="sinusoidal", space_min_m=100.0, space_max_m=1e6, space_scales=8))
    )
    lon, lat = np.array([-170.123456789, 116.4, -74.0]), np.array([60.5, 39.9, 40.6])
    lon1, lat1 = offset_lonlat(lon, lat, 1.0, 0.0)  # 1 m east
    a = enc(torch.from_numpy(np.stack([lon, lat], -1))[None])
    b = enc(torch.from_numpy(np.stack([lon1, lat1], -1))[None])
    assert a.shape == (1, 3, 48) and a.abs().max() <= 1.0
    step = (a - b).abs().max().item()
    assert 0 < step <= 2 * math.pi * 1.0 / 100.0 * 1.01  # one metre turns a 100 m wave by <= 3.6 degrees
    assert (a[0, 0] - a[0, 1]).abs().max() > 0.5  # Alaska and Beijing are far apart


def test_space_model_needs_lonlat_and_sees_where_a_track_is():
    ws = make_windows(n_tracks=4, points=40, window=32, seed=3)
    m = small(ws, space_encoding="sinusoidal")
    x, mask = torch.from_numpy(ws.x), torch.from_numpy(ws.mask)
    lonlat = torch.from_numpy(np.stack([ws.lon, ws.lat], -1))
    with pytest.raises(ValueError, match="lonlat"):
        m(ModelInputs(x, mask))
    with torch.no_grad():
        here = m(ModelInputs(x, mask, lonlat=lonlat))
        there = m(ModelInputs(x, mask, lonlat=lonlat + torch.tensor([0.3, 0.2], dtype=torch.float64)))
    assert not torch.allclose(here[mask], there[mask], atol=1e-4)  # unlike st-rope: it learns places


def test_kind_embedding_changes_outputs_and_defaults_to_unknown():
    ws = make_windows(n_tracks=3, points=40, window=32, seed=4)
    m = small(ws, n_kinds=4)
    with torch.no_grad():
        m.kind_emb.weight.normal_()
    x, mask = torch.from_numpy(ws.x), torch.from_numpy(ws.mask)
    with torch.no_grad():
        default = m(ModelInputs(x, mask))
        unknown = m(ModelInputs(x, mask, kind=torch.zeros(len(ws), dtype=torch.long)))
        vessel = m(ModelInputs(x, mask, kind=torch.full((len(ws),), 2)))
    assert torch.equal(default, unknown)
    assert not torch.allclose(vessel, default, atol=1e-4)


def test_space_and_time_encodings_train_and_forecast(tmp_path):
    tr = make_windows(n_tracks=16, points=90, window=32, seed=10, stride=16)
    va = make_windows(n_tracks=4, points=90, window=32, seed=11)
    st = stats_of(tr)
    cfg = GPTConfig.from_dict(
        dict(
            n_layer=2,
            n_head=2,
            d_model=32,
            block_size=32,
            dropout=0.0,
            space_encoding="sinusoidal",
            time_encoding="time2vec",
        )
    )
    res = train(tr, va, cfg, st, TrainConfig(epochs=3, batch_size=16, lr=3e-3, warmup_steps=2, device="cpu"), tmp_path)
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    rng = np.random.default_rng(0)
    pts = track_frame([(f"v{k}", *vessel_track(rng, n)) for k, n in enumerate([12, 40])])
    out = forecast_points(res.model, pts, horizon=4)
    assert len(out) == 8 and np.isfinite(out[["lon", "lat"]].to_numpy()).all()
