"""The model benchmark's own pieces: the linear-extrapolation baseline, the transformers twin
it races against (same computation), the GPU MFU script's refusal without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_tracks import one_torch_thread  # noqa: F401 (autouse fixture)
from synthetic_tracks import make_windows, straight_track, windows_from_tracks
from trajfm.bench.model import forecast_errors, linear_extrapolation
from trajfm.evaluate.forecast import constant_velocity, forecastable
from trajfm.geo import haversine_m


def test_linear_extrapolation_is_exact_on_a_straight_track_and_cv_with_two_points():
    # (exact up to the centimetre: one long offset in the last fix's tangent plane vs many short ones)
    lon, lat, t = straight_track(40, east_m=30.0, north_m=-40.0, dt_ns=60_000_000_000)
    ws = windows_from_tracks([("a", lon, lat, t)], window=32)
    pred_lon, pred_lat, pred_t = linear_extrapolation(ws, context_len=20, horizon=10)
    err = forecast_errors(pred_lon, pred_lat, ws.lon[:, 20:30], ws.lat[:, 20:30])
    assert err["fde_10_m"] < 0.05 and set(err) == {f"{a}_{k}_m" for k in (1, 5, 10) for a in ("ade", "fde")}
    assert np.array_equal(pred_t, ws.t_ns[:, 20:30])

    noisy = make_windows(n_tracks=6, points=60, window=32, seed=3)
    two = linear_extrapolation(noisy, context_len=20, horizon=10, fit_points=2)
    cv = constant_velocity(noisy, context_len=20, horizon=10)
    apart = haversine_m(two[0], two[1], cv[0], cv[1])  # (N, 10) metres
    sel = forecastable(noisy, 20, 10)
    step = haversine_m(cv[0][:, 0], cv[1][:, 0], noisy.lon[sel, 19], noisy.lat[sel, 19])
    assert apart[:, 0].max() < 1e-3 * step.max()  # the same velocity ...
    assert apart.max() < 1e-2 * 10 * step.max()  # ... walked in one tangent plane, not ten
    assert np.array_equal(two[2], cv[2])


def test_the_transformers_twin_computes_the_same_loss():
    pytest.importorskip("transformers")
    from trajfm.bench.model import HFTrajGPT2, speed_batch
    from trajfm.model import GPTConfig, TrajGPT

    config = GPTConfig(n_layer=2, n_head=4, d_model=32, block_size=24, dropout=0.0)
    mean, std = torch.tensor([1.0, -2.0, 4.1, 0, 0, 0, 0]), torch.tensor([300.0, 250.0, 0.3, 1, 1, 1, 1])
    torch.manual_seed(0)
    hf = HFTrajGPT2(config, mean, std).eval()
    ours = TrajGPT(config).eval()
    ours.set_normalization(mean.tolist(), std.tolist())
    with torch.no_grad():
        for name, p in hf.gpt2.named_parameters():
            p.normal_(0.0, 0.1)
        for name, p in ours.transformer.named_parameters():
            src = hf.gpt2.get_parameter(name)
            conv1d = name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc"))
            p.copy_(src.t() if conv1d else src)
        ours.in_proj.load_state_dict(hf.in_proj.state_dict())
        ours.head.load_state_dict(hf.head.state_dict())
    x, mask = speed_batch(config, 8)
    assert not mask.all()  # some rows padded
    torch.testing.assert_close(ours.loss(x, mask), hf.loss(x, mask), rtol=1e-4, atol=1e-6)


def test_mfu_script_refuses_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from trajfm.bench import mfu_gpu

    assert mfu_gpu.main(["--out", str(tmp_path / "mfu.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "mfu.json").exists()
