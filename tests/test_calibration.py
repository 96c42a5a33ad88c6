"""Forecast calibration that is part of the model (trajfm/model/blend.py, trajfm/evaluate/calibrate.py)
and the probabilistic scores (trajfm/evaluate/scores.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import bench_result
from synthetic_tracks import one_torch_thread  # noqa: F401 (autouse fixture)
from trajfm.evaluate.calibrate import calibrate_model, calibrate_stage, with_calibration
from trajfm.evaluate.forecast import constant_velocity, forecast_points, forecastable, rollout
from trajfm.evaluate.scores import coverage, crps_gaussian, crps_m, crps_samples, isotropic_cov, radial_scores
from trajfm.features.windows import WindowSet
from trajfm.geo import haversine_m
from trajfm.model import GPTConfig, load_model
from trajfm.model.blend import add_quantiles, fit_radius, per_step, quantile_offsets_m, radius_table, region_radius_m
from trajfm.model.config import RADIUS_LEVELS

CONTEXT, H = 20, 10


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tutorial model trained 30 steps on one real day of New York Harbor AIS (tracktable-data)."""
    from benchmarks.model import prepare_features
    from trajfm.data.catalog import SMALL_SLICE, embedded_files
    from trajfm.train import run_training

    root = tmp_path_factory.mktemp("ais")
    features, _ = prepare_features([str(p) for p in embedded_files(SMALL_SLICE)], root)
    train_dir = run_training(
        features,
        root=root,
        preset="tutorial",
        train_overrides={"epochs": 8, "max_steps": 30, "batch_size": 32, "device": "cpu", "progress": False, "seed": 0},
    )
    return root, features, train_dir, load_model(train_dir / "model.pt")


def _errors(model, ws):
    sel = forecastable(ws, CONTEXT, H)
    tl, ta = ws.lon[sel, CONTEXT : CONTEXT + H], ws.lat[sel, CONTEXT : CONTEXT + H]
    lon, lat, _ = rollout(model, ws, CONTEXT, H)
    cl, ca, _ = constant_velocity(ws, CONTEXT, H)
    return haversine_m(lon, lat, tl, ta).mean(axis=0), haversine_m(cl, ca, tl, ta).mean(axis=0)


def test_blend_is_never_worse_than_cv_or_the_model_on_the_split_it_was_chosen_on(trained):
    _, features, _, model = trained
    val = WindowSet.load(features / "val.npz")
    calibrated, info = calibrate_model(model, val, CONTEXT, H)
    blended, cv = _errors(calibrated, val)
    raw, _ = _errors(model, val)
    w = np.asarray(info["blend"])
    assert np.all(blended <= cv + 1e-6)  # constant velocity, or better
    assert np.all((blended <= raw + 1e-6)[w > 0])  # and where the model has a weight, no worse than it
    assert len(info["blend"]) == H and len(info["radius_m"]) == H
    np.testing.assert_allclose(info["val_error_m"]["blended"], blended, atol=0.01)
    assert calibrated.config.calibration.forecast_blend == tuple(info["blend"])  # in the model, not beside it
    assert model.config.calibration.forecast_blend is None  # the original is left alone


def test_a_zero_blend_is_constant_velocity_exactly(trained):
    _, features, _, model = trained
    test = WindowSet.load(features / "test.npz")
    lon, lat, t = rollout(with_calibration(model, blend=(0.0,) * H), test, CONTEXT, H)
    cl, ca, _ = constant_velocity(test, CONTEXT, H)
    np.testing.assert_array_equal(lon, cl)
    np.testing.assert_array_equal(lat, ca)
    _, _, t_raw = rollout(model, test, CONTEXT, H)
    np.testing.assert_array_equal(t, t_raw)  # times stay the model's


def test_calibration_travels_in_the_checkpoint_to_forecast_points(trained, tmp_path):
    root, features, train_dir, model = trained
    out = calibrate_stage(features, train_dir, root=root)
    loaded = load_model(out / "model.pt")
    assert (
        loaded.config.calibration.forecast_blend is not None and loaded.config.calibration.forecast_radius_m is not None
    )
    test = WindowSet.load(features / "test.npz")
    i = forecastable(test, CONTEXT, H)[:6]
    points = pd.concat(
        [
            pd.DataFrame(
                {
                    "traj_id": f"w{j}",
                    "t": pd.to_datetime(test.t_ns[j, :CONTEXT], utc=True),
                    "lon": test.lon[j, :CONTEXT],
                    "lat": test.lat[j, :CONTEXT],
                }
            )
            for j in i
        ]
    )
    a = forecast_points(loaded, points, H)
    zero = forecast_points(with_calibration(loaded, blend=(0.0,) * H), points, H)
    cl, ca, _ = constant_velocity(test.subset(i), CONTEXT, H)
    np.testing.assert_allclose(zero["lon"].to_numpy().reshape(-1, H), cl, atol=1e-9)
    np.testing.assert_allclose(zero["lat"].to_numpy().reshape(-1, H), ca, atol=1e-9)
    raw = forecast_points(model, points, H)
    w = np.asarray(loaded.config.calibration.forecast_blend)
    moved = np.abs(a["lon"].to_numpy() - raw["lon"].to_numpy()).reshape(-1, H).max(axis=0)
    assert np.all(moved[w == 1.0] == 0) and np.all(moved[w < 1.0] > 0)  # the blend applied where it is not 1
    q = add_quantiles(a, loaded.config)
    assert {"lon_q10", "lat_q90", "radius_m_q80"} <= set(q.columns)
    assert np.all(q["lon_q10"] < q["lon_q50"]) and np.all(q["lon_q50"] < q["lon_q90"])
    np.testing.assert_allclose(q["lon_q50"], q["lon"], atol=1e-12)
    again = calibrate_stage(features, train_dir, root=root)
    assert again == out  # cached


def test_config_round_trips_and_refuses_bad_values():
    table = [[float(i + 1) for i in range(len(RADIUS_LEVELS))]] * 3
    cfg = GPTConfig.from_dict(dict(forecast_blend=[0.0, 0.5, 1.0], forecast_radius_m=table))
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg and cfg.calibration.forecast_blend == (0.0, 0.5, 1.0)
    assert GPTConfig().to_dict()["calibration"] == {"forecast_blend": None, "forecast_radius_m": None}
    with pytest.raises(ValueError, match="forecast_blend needs one weight in"):
        GPTConfig.from_dict(dict(forecast_blend=[1.5]))
    with pytest.raises(ValueError, match="increasing radii"):
        GPTConfig.from_dict(dict(forecast_radius_m=[list(reversed(table[0]))]))
    with pytest.raises(ValueError, match="increasing radii"):
        GPTConfig.from_dict(dict(forecast_radius_m=[[1.0, 2.0]]))
    np.testing.assert_allclose(per_step((0.2, 0.7), 4, grow=False), [0.2, 0.7, 0.7, 0.7])
    np.testing.assert_allclose(radius_table(table, 6)[-1], np.asarray(table[0]) * 2)  # past the fitted steps: linear
    np.testing.assert_allclose(region_radius_m(cfg, 3, 0.5), table[0][RADIUS_LEVELS.index(0.5)])


def test_gaussian_coverage_is_nominal_on_synthetic_gaussian_errors():
    rng = np.random.default_rng(0)
    n = 200_000
    sigma = np.array([3.0, 30.0])
    err = rng.normal(size=(n, 2, 2)) * sigma[None, :, None]
    for level in (0.5, 0.8, 0.9):
        np.testing.assert_allclose(coverage(err, isotropic_cov(sigma, n), level), level, atol=0.005)
        np.testing.assert_allclose(
            coverage(err, isotropic_cov(sigma * 2, n), level), 1 - (1 - level) ** 4, atol=0.005
        )  # a disc twice as wide
    C = np.array([[100.0, 60.0], [60.0, 49.0]])  # correlated: the ellipse, not the disc
    e = rng.multivariate_normal([0, 0], C, size=n)[:, None, :]
    np.testing.assert_allclose(coverage(e, np.broadcast_to(C, (n, 1, 2, 2)), 0.8), 0.8, atol=0.005)


def test_radial_error_model_is_calibrated_at_every_level_on_heavy_tailed_errors():
    """Errors like the real ones (mostly small, a tail 10x wider): the fitted radial quantiles cover
    each level on the errors they were fitted on and on fresh draws, where a Gaussian does not."""
    rng = np.random.default_rng(0)

    def draw(n):
        scale = np.where(rng.random((n, 2, 1)) < 0.85, 10.0, 100.0) * np.array([1.0, 3.0])[None, :, None]
        return rng.normal(size=(n, 2, 2)) * scale

    fit, fresh = draw(50_000), draw(50_000)
    table = np.asarray(fit_radius(np.hypot(fit[..., 0], fit[..., 1])))
    for err, tol in ((fit, 1e-3), (fresh, 0.01)):
        sc = radial_scores(err, table)
        for level in ("50", "80", "90"):
            np.testing.assert_allclose(sc["coverage"][level], int(level) / 100, atol=tol)
    rms = np.sqrt((fit**2).mean(axis=(0, 2)))  # the Gaussian with the same variance
    assert abs(coverage(fresh, isotropic_cov(rms, len(fresh)), 0.5)[0] - 0.5) > 0.1
    # Gaussian errors: the per-axis quantile offsets are sigma * z
    g = rng.normal(size=(100_000, 1, 2)) * 20.0
    cfg = GPTConfig.from_dict(dict(forecast_radius_m=fit_radius(np.hypot(g[..., 0], g[..., 1]))))
    from statistics import NormalDist

    z = np.array([NormalDist().inv_cdf(p) for p in (0.1, 0.5, 0.9)])
    np.testing.assert_allclose(quantile_offsets_m(cfg, 1, (0.1, 0.5, 0.9))[0], 20.0 * z, atol=0.6)
    # and the CRPS of that table is the Gaussian's (closed form) to 1%
    np.testing.assert_allclose(
        radial_scores(g[:5000], np.asarray(cfg.calibration.forecast_radius_m))["crps_m"][0],
        crps_m(g[:5000], isotropic_cov([20.0], 5000))[0],
        rtol=0.01,
    )


def test_crps_matches_its_definition_and_limits():
    sigma, y = 2.5, np.array([-4.0, 0.0, 1.3, 7.0])
    x = np.linspace(-60, 60, 240_001)
    from scipy.stats import norm

    F = norm.cdf(x, scale=sigma)
    numeric = [np.trapezoid((F - (x >= v)) ** 2, x) for v in y]  # the definition: integral of (F - step)^2
    np.testing.assert_allclose(crps_gaussian(y, sigma), numeric, atol=1e-3)  # the step at y costs half a grid cell
    np.testing.assert_allclose(crps_gaussian(0.0, 1.0), (math.sqrt(2) - 1) / math.sqrt(math.pi))
    np.testing.assert_allclose(crps_gaussian(y, 1e-9), np.abs(y), atol=1e-6)  # no spread: absolute error
    rng = np.random.default_rng(1)
    draws = rng.normal(0, sigma, 400_000)  # E|X - y| - E|X - X'| / 2
    sample = np.abs(draws - 1.3).mean() - 0.5 * np.abs(draws - rng.permutation(draws)).mean()
    np.testing.assert_allclose(crps_gaussian(1.3, sigma), sample, rtol=0.01)
    x = np.sort(rng.normal(0, sigma, 301))  # the draws' formula equals the brute-force double sum
    obs = np.array([-3.0, 0.2, 9.0])
    brute = np.abs(x[None, :] - obs[:, None]).mean(axis=1) - 0.5 * np.abs(x[:, None] - x[None, :]).mean()
    np.testing.assert_allclose(crps_samples(x, obs), brute, rtol=1e-12)
    np.testing.assert_allclose(crps_samples(np.sort(draws), np.array([1.3])), crps_gaussian(1.3, sigma), rtol=0.01)
    err = np.stack([np.full((3, 1), 1.3), np.zeros((3, 1))], axis=-1)
    np.testing.assert_allclose(
        crps_m(err, isotropic_cov([sigma], 3)), (crps_gaussian(1.3, sigma) + crps_gaussian(0, sigma)) / 2
    )


def test_evaluate_stage_and_demo_summary_show_cv_kalman_and_model_at_1_5_10(trained):
    from trajfm.evaluate.run import forecast_rows, metrics_table, run_evaluation

    root, features, train_dir, _ = trained
    model_dir = calibrate_stage(features, train_dir, root=root)
    m = run_evaluation(features, model_dir, root=root, context_len=CONTEXT, horizon=H)
    for p in ("", "cv_", "kf_"):
        assert all(m[f"{p}fde_m@{h}"] > 0 for h in (1, 5, 10))
        assert 0 < m[f"{p}coverage80"] <= 1 and m[f"{p}crps_m"] > 0
    assert m["fde_m@10"] == pytest.approx(m["fde_m"]) and m["kf_q_m2_s3"] > 0 and m["kf_mle_r_m2"] > 0
    assert m["blend"] == list(load_model(model_dir / "model.pt").config.calibration.forecast_blend)
    rows = forecast_rows(m, 30)
    assert [r.split()[0] for r in rows[1:4]] == ["constant", "Kalman", "model"] and "@5 (m)" in rows[0]
    assert f"{m['kf_fde_m@5']:.1f}" in rows[2] and "blends with constant velocity" in rows[-1]
    assert [r["predictor"] for r in metrics_table(m)] == ["model (tutorial)", "constant velocity", "Kalman filter"]


def test_model_benchmark_reports_blended_presets_per_step_and_their_scores(tmp_path):
    import dataclasses

    import benchmarks.model as bm
    from benchmarks.model_budget import BUDGETS
    from benchmarks.model_results import markdown, merge_quality
    from trajfm.data.catalog import SMALL_SLICE, embedded_files

    budget = dataclasses.replace(BUDGETS["quick"], max_test_windows=48)
    q = bm.evaluate_dataset(
        "ais",
        [str(p) for p in embedded_files(SMALL_SLICE)],
        tmp_path / "root",
        6,
        budget,
        log=lambda msg: None,
        presets=["tutorial"],
    )
    val, test = q["step_errors"]["val"], q["step_errors"]["test"]
    assert set(test) == {
        "constant_velocity",
        "linear_extrapolation",
        "kalman",
        "kalman_mle",
        "tutorial",
        "tutorial+blend",
    }
    assert all(len(v) == 10 for v in test.values())
    # on the split the rule was chosen on, never worse than constant velocity or the raw preset at any step
    assert np.all(np.asarray(val["tutorial+blend"]) <= np.minimum(val["constant_velocity"], val["tutorial"]) + 0.01)
    rule = q["training"]["per_preset"]["tutorial"]["blend"]["seed 0"]
    assert len(rule["weights"]) == 10 and all(0 <= w <= 1 for w in rule["weights"])
    pr = q["probabilistic"]["predictors"]
    assert set(pr) == {"constant_velocity", "constant_velocity (val fit)", "kalman_mle", "tutorial+blend"}
    assert all(0 <= c <= 1 for p in pr.values() for lv in ("50", "80", "90") for c in p["coverage"][lv])
    assert q["kalman"]["q_m2_s3"] > 0 and q["kalman"]["forecast_s"]["test"] >= 0
    r = bench_result(q, runs=[])
    md = markdown(r)
    assert "Error (m) at each step ahead" in md and "| kalman |" in md and "CRPS m (mean)" in md
    assert "Kalman filter: q = " in md and "Steps where a blended preset is worse than constant velocity on test" in md
    merged = merge_quality(q, q)
    assert merged["step_errors"] == q["step_errors"] and merged["probabilistic"] == q["probabilistic"]


def test_fine_tuning_starts_from_the_uncalibrated_weights_of_a_calibrated_champion(trained):
    from trajfm.evaluate.calibrate import uncalibrated_checkpoint
    from trajfm.train import run_training

    root, features, train_dir, model = trained
    calibrated = calibrate_stage(features, train_dir, root=root) / "model.pt"
    overrides = {"epochs": 1, "max_steps": 2, "batch_size": 32, "device": "cpu", "progress": False, "seed": 0}
    stale = run_training(
        features, root=root, preset="tutorial", train_overrides={**overrides, "init_checkpoint": str(calibrated)}
    )
    # fine-tuning inherits the old rule
    assert load_model(stale / "model.pt").config.calibration.forecast_blend is not None
    plain = uncalibrated_checkpoint(calibrated, root)
    assert plain != calibrated and uncalibrated_checkpoint(train_dir / "model.pt", root) == train_dir / "model.pt"
    m = load_model(plain)
    assert m.config == model.config
    for (k, a), (_, b) in zip(m.state_dict().items(), model.state_dict().items()):
        assert torch.equal(a, b), k
    tuned = run_training(
        features, root=root, preset="tutorial", train_overrides={**overrides, "init_checkpoint": str(plain)}
    )
    # the retrain flow calibrates it afresh
    assert load_model(tuned / "model.pt").config.calibration.forecast_blend is None


def test_blend_falls_back_to_constant_velocity_when_the_gain_is_within_the_noise():
    """Truth 100 m north of the last fix; constant velocity says 100 m east. A model that is clearly
    better gets a weight; one whose gain is a few metres over widely spread errors does not."""
    from trajfm.geo import offset_lonlat
    from trajfm.model.blend import fit_blend

    rng = np.random.default_rng(0)
    n = 400
    lon0, lat0 = np.full(n, -74.0), np.full(n, 40.6)
    true = offset_lonlat(lon0, lat0, 0.0, 100.0)
    cv = offset_lonlat(lon0, lat0, 100.0, 0.0)
    col = lambda a: a[:, None]  # noqa: E731  (N,) -> (N, 1): one forecast step
    good = offset_lonlat(lon0, lat0, 30.0 + rng.normal(0, 5, n), 70.0)  # ~42 m from the truth vs 141 m
    w_good = fit_blend(lon0, lat0, *map(col, good), *map(col, cv), *map(col, true))
    assert w_good[0] > 0.5
    # a model on the line from the truth to constant velocity, 2 m nearer the truth on average but
    # spread +-40 m: its gain (2 m) is within 1.645 standard errors (40 / sqrt(400) = 2 m)
    d = np.clip(np.hypot(100.0, 100.0) - 2.0 - rng.normal(0, 40, n), 1.0, None)
    noisy = offset_lonlat(*true, d / np.sqrt(2), -d / np.sqrt(2))
    w_noisy = fit_blend(lon0, lat0, *map(col, noisy), *map(col, cv), *map(col, true))
    assert w_noisy[0] == 0.0  # its best blend gains little next to the spread: constant velocity
    assert (
        fit_blend(lon0, lat0, *map(col, noisy), *map(col, cv), *map(col, true), margin_z=-10.0)[0] > 0
    )  # without the margin it would blend


def test_a_validation_split_without_long_windows_leaves_the_model_uncalibrated_with_a_reason(trained):
    from trajfm.evaluate.calibrate import read_calibration

    root, features, train_dir, model = trained
    out = calibrate_stage(features, train_dir, root=root, context_len=30, horizon=10)  # windows hold 32 points
    info = read_calibration(out)
    assert "no validation window has 40 real points" in info["skipped"]
    assert load_model(out / "model.pt").config == model.config
