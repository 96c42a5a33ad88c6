"""The evaluation tasks (trajfm/evaluate/tasks.py) on real windows: AIS NY Harbor and GeoLife."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import cleaned_windows, seeded_model, small_slice_windows, zero_head
from synthetic_tracks import (
    one_torch_thread,  # noqa: F401 (autouse fixture)
    straight_track,
    windows_from_tracks,
)
from trajfm.evaluate.tasks import TASKS, run_task, run_tasks

SMALL = dict(n_layer=2, n_head=2, d_model=32, block_size=64, dropout=0.0)


@pytest.fixture(scope="module")
def ais():
    """Train and test windows of the 9,091-point NY Harbor day (resampled to 60 s)."""
    return small_slice_windows()


def make_model(train, seed=0, **cfg):
    return seeded_model(train, seed, **{**SMALL, **cfg}).eval()


def finite_floats(metrics: dict) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


# --- registry --------------------------------------------------------------------------------


def test_registry_rejects_unknown_tasks_and_parameters(ais):
    with pytest.raises(ValueError, match="unknown evaluation task"):
        run_task("nope", None, ais["test"])
    with pytest.raises(ValueError, match="unknown evaluation tasks"):
        run_tasks(None, ais["test"], ["forecast", "nope"])
    with pytest.raises(ValueError, match="forecast.*bogus"):
        run_task("forecast", None, ais["test"], bogus=1)
    with pytest.raises(ValueError, match="empty"):
        run_task("forecast", None, ais["test"].subset(np.zeros(0, int)))
    assert set(TASKS) == {"forecast", "recovery", "travel_time", "next_location", "generation", "similarity"}
    from trajfm.evaluate.tasks import TRAINED_BASELINES, parse_key

    assert parse_key("forecast.fde_m@10.model") == ("forecast", "fde_m@10", "model")
    assert parse_key("forecast.n_windows") == ("forecast", "n_windows", None)
    with pytest.raises(ValueError):
        parse_key("weather.rain_mm.model")
    assert set(TRAINED_BASELINES) == {"forecast", "travel_time", "next_location", "generation"}


# --- forecast ----------------------------------------------------------------------------------


def test_forecast_keys_and_time_horizons_on_real_ais(ais):
    model = make_model(ais["train"])
    m = run_task("forecast", model, ais["test"], horizons=(1, 5, 10), minutes=(1, 5, 10))
    assert finite_floats(m)
    for p in ("model", "constant_velocity"):
        for k in ("ade_m@1", "fde_m@5", "ade_m@10", "fde_m@10", "mae_m@5", "rmse_m@5", "fde_m@5min"):
            assert f"forecast.{k}.{p}" in m
        assert m[f"forecast.rmse_m@5.{p}"] >= m[f"forecast.mae_m@5.{p}"]
    assert m["forecast.n_windows"] > 50
    # the NY slice is resampled to 60 s and constant velocity keeps the last gap: minute h is step h
    for h in (1, 5, 10):
        cv = m[f"forecast.fde_m@{h}min.constant_velocity"]
        assert cv == pytest.approx(m[f"forecast.fde_m@{h}.constant_velocity"], abs=1e-3)
    # an untrained model is far worse than constant velocity on real vessel tracks
    assert m["forecast.ade_m@10.model"] > m["forecast.ade_m@10.constant_velocity"]
    # baselines only
    base = run_task("forecast", None, ais["test"])
    assert not any(k.endswith(".model") for k in base)
    assert base["forecast.fde_m@10.constant_velocity"] == m["forecast.fde_m@10.constant_velocity"]


def test_forecast_zero_velocity_anchored_head_equals_constant_velocity(ais):
    model = zero_head(make_model(ais["train"], anchor="velocity"))
    m = run_task("forecast", model, ais["test"], horizons=(1, 10), minutes=(3,))
    # same positions step by step (float32 features vs float64 fixes); its clock is the train
    # mean log gap, not the last gap, so the minute horizons are not compared
    for k in ("ade_m@1", "fde_m@10", "mae_m@5", "rmse_m@5"):
        assert m[f"forecast.{k}.model"] == pytest.approx(m[f"forecast.{k}.constant_velocity"], abs=0.01)


def test_forecast_minutes_interpolate_between_fixes():
    # 90 s sampling: 3 minutes is exactly step 2, 2 minutes halfway between steps 1 and 2
    NS = 1_000_000_000
    ws = windows_from_tracks([(f"s{k}", *straight_track(30, 30.0, 40.0, 90 * NS, lat0=40 + k)) for k in range(2)], 30)
    m = run_task("forecast", None, ws, context_len=10, horizons=(2,), minutes=(2, 3, 60))
    assert m["forecast.fde_m@3min.constant_velocity"] < 1e-6  # a straight constant-speed track
    assert m["forecast.n_windows@60min"] == 0 and "forecast.fde_m@60min.constant_velocity" not in m
    assert m["forecast.n_windows@2min"] == 2


def test_forecast_skips_a_model_that_cannot_forecast(ais):
    model = make_model(ais["train"], objective="infill")
    m = run_task("forecast", model, ais["test"])
    assert "forecast.ade_m@10.constant_velocity" in m and not any(k.endswith(".model") for k in m)


# --- recovery ----------------------------------------------------------------------------------


def test_recovery_keys_determinism_and_mask_share(ais):
    model = make_model(ais["train"], objective="mixed")
    test = ais["test"].subset(np.arange(0, len(ais["test"]), 3))
    a = run_task("recovery", model, test, seed=1)
    assert finite_floats(a)
    for masking in ("random", "block"):
        for p in ("model", "linear_interp"):
            assert a[f"recovery.{masking}_rmse_m.{p}"] >= a[f"recovery.{masking}_mae_m.{p}"] > 0
    interior = (np.minimum(test.mask.sum(1), 30) - 2).sum()
    assert a["recovery.random_n_points"] == pytest.approx(0.5 * interior, rel=0.02)
    assert a["recovery.random_n_runs"] > a["recovery.block_n_runs"]  # 50% at random: many runs
    assert run_task("recovery", model, test, seed=1) == a
    b = run_task("recovery", None, test, seed=2)
    assert b["recovery.random_mae_m.linear_interp"] != a["recovery.random_mae_m.linear_interp"]
    # an untrained model is far from the track; straight lines are good on vessels
    assert a["recovery.block_mae_m.model"] > a["recovery.block_mae_m.linear_interp"]


def test_recovery_zero_anchored_head_is_linear_interpolation(ais):
    model = zero_head(make_model(ais["train"], objective="infill", anchor="velocity"))
    m = run_task("recovery", model, ais["test"], seed=3, block_points=6)
    for k in ("random_mae_m", "random_rmse_m", "block_mae_m", "block_rmse_m"):
        assert m[f"recovery.{k}.model"] == pytest.approx(m[f"recovery.{k}.linear_interp"], abs=0.05)


def test_recovery_linear_interpolation_is_exact_on_a_straight_constant_speed_track():
    NS = 1_000_000_000
    ws = windows_from_tracks([(f"s{k}", *straight_track(30, 40.0, -25.0, 30 * NS, lat0=40 + k)) for k in range(4)], 30)
    m = run_task("recovery", None, ws, seed=0)
    assert m["recovery.random_mae_m.linear_interp"] < 0.01 and m["recovery.block_rmse_m.linear_interp"] < 0.01
    assert m["recovery.block_n_points"] == 4 * 14  # round(0.5 * 28) per window


def test_recovery_leaves_out_a_model_that_cannot_infill(ais):
    m = run_task("recovery", make_model(ais["train"]), ais["test"])
    assert "recovery.random_mae_m.linear_interp" in m and not any(k.endswith(".model") for k in m)
    with pytest.raises(ValueError, match="mask_ratio"):
        run_task("recovery", None, ais["test"], mask_ratio=1.0)


# --- travel time -------------------------------------------------------------------------------


def test_travel_time_keys_on_real_ais(ais):
    model = make_model(ais["train"], objective="mixed")
    m = run_task("travel_time", model, ais["test"], train_ws=ais["train"])
    assert finite_floats(m) and m["travel_time.n_trips"] > 20
    for s in ("path", "od"):
        for p in ("model", "historical_speed"):
            assert m[f"travel_time.{s}_mae_s.{p}"] >= 0 and m[f"travel_time.{s}_mape.{p}"] >= 0
    nxt = run_task("travel_time", make_model(ais["train"]), ais["test"], train_ws=ais["train"])
    assert "travel_time.path_mae_s.model" in nxt and "travel_time.od_mae_s.model" not in nxt
    assert nxt["travel_time.od_mae_s.historical_speed"] == m["travel_time.od_mae_s.historical_speed"]
    # a model in each sequence's own units has no time scale at a route's first point: left out
    ctx = run_task("travel_time", make_model(ais["train"], norm="context"), ais["test"], train_ws=ais["train"])
    assert not any(k.endswith(".model") for k in ctx)
    assert ctx["travel_time.path_mae_s.historical_speed"] == m["travel_time.path_mae_s.historical_speed"]


def test_travel_time_trips_are_cut_by_distance_not_by_fix_count():
    from trajfm.evaluate.travel_time import duration_s, trips

    NS = 1_000_000_000
    # same 60 s sampling, 3 and 6 m/s: the first 1,000 m take 333.3 s and 166.7 s
    ws = windows_from_tracks(
        [
            ("slow", *straight_track(30, 180.0, 0.0, 60 * NS)),
            ("fast", *straight_track(30, 0.0, 360.0, 60 * NS, lat0=41)),
        ],
        30,
    )
    tr = trips(ws, 1000.0, 10)
    assert duration_s(tr) == pytest.approx([1000 / 3, 1000 / 6], abs=1e-3)
    assert len(trips(ws, 1e6, 10)) == 0  # no window covers 1,000 km


def test_travel_time_historical_speed_is_exact_at_one_speed_and_model_bookkeeping():
    NS = 1_000_000_000

    def mk(k, t0):
        return (f"s{k}", *straight_track(40, 50.0 * (1 + k % 2), 0.0, 20 * NS, lat0=40 + 0.1 * k, t0_ns=t0))

    T0 = 1_593_475_200 * NS
    train = windows_from_tracks([mk(k, T0 + 3600 * NS * k) for k in range(8)], 40)
    test = windows_from_tracks([mk(k, T0 + 3600 * NS * k + 86_400 * NS) for k in range(8)], 40)
    # two speeds (2.5 and 5 m/s), one at even hours, one at odd: hourly speeds are exact
    m = run_task("travel_time", None, test, train_ws=train, distance_m=500.0, min_trips_per_hour=1)
    assert m["travel_time.path_mae_s.historical_speed"] < 1e-3 and m["travel_time.od_mape.historical_speed"] < 1e-3
    # a zero head predicts the training mean log gap at every step: (route_points - 1) equal gaps
    model = zero_head(make_model(train))
    gap = math.expm1(float(model.feat_mean[2]))
    m = run_task("travel_time", model, test, train_ws=train, distance_m=500.0, route_points=6)
    true = np.where(np.arange(8) % 2, 100.0, 200.0)
    assert m["travel_time.path_mae_s.model"] == pytest.approx(np.abs(5 * gap - true).mean(), abs=0.01)


def test_split_for_fitting_never_shares_a_point(ais):
    from trajfm.evaluate.baselines import split_for_fitting

    fit, score = split_for_fitting(ais["test"], None)
    last = fit.t_ns[np.arange(len(fit)), fit.mask.sum(1) - 1]
    assert len(fit) > 10 and len(score) > 10 and last.max() < score.t_ns[:, 0].min()
    m = run_task("travel_time", None, ais["test"])
    assert m["travel_time.n_trips"] <= len(score)


# --- next location -----------------------------------------------------------------------------


def loop_tracks(laps: int, lon0=-74.0, lat0=40.6, t0_ns=1_593_475_200 * 10**9, name="loop"):
    """One track going round the same 20-point circle (radius 2 km, fixes every 60 s) ``laps`` times."""
    from trajfm.geo import offset_lonlat

    a = np.tile(np.arange(20) / 20 * 2 * np.pi, laps)
    lon, lat = offset_lonlat(np.full(len(a), lon0), np.full(len(a), lat0), 2000 * np.sin(a), 2000 * np.cos(a))
    return [(name, lon, lat, t0_ns + 60 * 10**9 * np.arange(len(a), dtype=np.int64))]


def test_next_location_keys_and_zero_anchored_head_is_constant_velocity(ais):
    model = make_model(ais["train"], head="mixture")
    test = ais["test"].subset(np.arange(0, len(ais["test"]), 2))
    a = run_task("next_location", model, test, train_ws=ais["train"], seed=4)
    assert finite_floats(a) and a["next_location.n_pairs"] > 1000
    assert 7 <= a["next_location.resolution"] <= 11  # 60 s vessel steps of a few hundred metres
    for p in ("model", "constant_velocity", "markov_h3"):
        assert 0 <= a[f"next_location.acc@1.{p}"] <= a[f"next_location.acc@5.{p}"] <= 1
        assert a[f"next_location.acc@1.{p}"] <= a[f"next_location.mrr.{p}"] <= a[f"next_location.acc@5.{p}"] + 0.2
    assert run_task("next_location", model, test, train_ws=ais["train"], seed=4) == a  # seeded draws
    zero = zero_head(make_model(ais["train"], anchor="velocity"))
    b = run_task("next_location", zero, test, train_ws=ais["train"], resolution=9)
    for k in ("acc@1", "acc@5", "mrr"):
        assert b[f"next_location.{k}.model"] == b[f"next_location.{k}.constant_velocity"]
    assert b["next_location.resolution"] == 9


def test_markov_chain_is_perfect_on_a_repeated_loop_and_stays_on_unseen_cells():
    train = windows_from_tracks(loop_tracks(6), 30)
    test = windows_from_tracks(loop_tracks(3, t0_ns=1_593_561_600 * 10**9), 30)
    m = run_task("next_location", None, test, train_ws=train, resolution=9)
    assert m["next_location.acc@1.markov_h3"] == 1.0 and m["next_location.mrr.markov_h3"] == 1.0
    assert m["next_location.stay_share"] == 0.0
    far = windows_from_tracks(loop_tracks(3, lon0=10.0, lat0=50.0), 30)  # cells the chain never saw
    m = run_task("next_location", None, far, train_ws=train, resolution=9)
    assert m["next_location.acc@5.markov_h3"] == 0.0  # "stay in place" is never right on a moving loop
    with pytest.raises(ValueError, match="resolution"):
        run_task("next_location", None, far, train_ws=train, resolution=16)


# --- generation --------------------------------------------------------------------------------


def test_jensen_shannon_is_zero_on_itself_and_grows_with_a_shift(ais):
    from trajfm.evaluate.metrics import BINS, distribution_jsd, histogram, jensen_shannon, motion_statistics

    ws = ais["test"]
    full = ws.mask.all(axis=1)
    real = motion_statistics(ws.lon[full], ws.lat[full], ws.t_ns[full])
    assert all(v == 0.0 for v in distribution_jsd(real, real).values())
    faster = {**real, "speed_mps": real["speed_mps"] * 2, "step_m": real["step_m"] * 1.3}
    jsd = distribution_jsd(faster, real)
    assert jsd["turn_deg"] == 0.0 and 0.05 < jsd["step_m"] < jsd["speed_mps"] < 1.0
    assert jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)
    p, q = histogram(real["step_m"], BINS["step_m"]), histogram(real["step_m"] * 3, BINS["step_m"])
    assert jensen_shannon(p, q) == pytest.approx(jensen_shannon(q, p))


def test_motion_statistics_of_a_straight_constant_speed_track():
    from trajfm.evaluate.metrics import motion_statistics

    NS = 1_000_000_000
    _, lon, lat, t = "s", *straight_track(11, 30.0, 40.0, 10 * NS)
    st = motion_statistics(lon[None], lat[None], t[None])
    assert st["step_m"] == pytest.approx(np.full(10, 50.0), rel=1e-6)
    assert st["speed_mps"] == pytest.approx(np.full(10, 5.0), rel=1e-6)
    assert st["turn_deg"].max() < 1e-3 and st["duration_s"][0] == 100.0
    assert st["gyration_m"][0] == pytest.approx(50.0 * math.sqrt((11**2 - 1) / 12), rel=1e-6)


def test_generation_keys_seeds_and_baselines(ais):
    model = make_model(ais["train"], head="mixture")
    a = run_task("generation", model, ais["test"], seed=0)
    assert finite_floats(a) and a["generation.n_windows"] > 50
    for g in ("model", "constant_velocity", "resampled_steps"):
        for stat in ("step_m", "speed_mps", "turn_deg", "duration_s", "gyration_m", "mean"):
            assert 0.0 <= a[f"generation.jsd_{stat}.{g}"] <= 1.0
    assert run_task("generation", model, ais["test"], seed=0) == a
    b = run_task("generation", model, ais["test"], seed=1)
    assert b["generation.jsd_step_m.model"] != a["generation.jsd_step_m.model"]
    # constant velocity never turns and keeps the last gap: the turn distribution is off, the
    # durations of 60 s resampled tracks are exact; resampled real steps get step lengths right
    assert a["generation.jsd_turn_deg.constant_velocity"] > 0.1
    assert a["generation.jsd_duration_s.constant_velocity"] == 0.0
    assert a["generation.jsd_step_m.resampled_steps"] < a["generation.jsd_step_m.model"]


# --- similarity --------------------------------------------------------------------------------


def test_similarity_keys_and_the_handcrafted_baseline_finds_real_trips(ais):
    model = make_model(ais["train"])
    m = run_task("similarity", model, ais["test"])
    assert finite_floats(m) and m["similarity.n_windows"] > 50
    for p in ("model", "resampled_path"):
        assert 1.0 <= m[f"similarity.mean_rank.{p}"] <= m["similarity.n_windows"]
        assert m[f"similarity.hit@1.{p}"] <= m[f"similarity.hit@5.{p}"] <= m[f"similarity.hit@10.{p}"]
    assert m["similarity.hit@1.resampled_path"] > 0.8  # odd and even halves of a real track coincide
    sub = run_task("similarity", None, ais["test"], max_windows=40, seed=3)
    assert sub["similarity.n_windows"] == 40 and sub == run_task(
        "similarity", None, ais["test"], max_windows=40, seed=3
    )


def test_constant_embeddings_rank_last():
    from trajfm.evaluate.similarity import self_ranks

    assert (self_ranks(np.zeros((7, 3)), np.zeros((7, 3))) == 7).all()
    q = np.eye(5)
    assert (self_ranks(q, q + 0.01) == 1).all()


def test_trajectory_embedding_ignores_padding_and_absolute_latitude(ais):
    from trajfm.evaluate.similarity import trajectory_embedding

    NS = 1_000_000_000
    model = make_model(ais["train"], position="rope")
    tracks = [
        ("a", *straight_track(20, 30.0, 40.0, 60 * NS, lat0=40.0)),
        ("b", *straight_track(20, 30.0, 40.0, 60 * NS, lat0=45.0)),
        ("c", *straight_track(12, -50.0, 10.0, 60 * NS)),
    ]
    ws = windows_from_tracks(tracks, 24)
    emb = trajectory_embedding(model, ws)
    assert emb.shape == (3, 32)
    assert np.abs(emb[0] - emb[1]).max() < 1e-4  # same motion, same hour, 5 degrees further north
    assert np.abs(emb[0] - emb[2]).max() > 1e-2
    ws.x[~ws.mask] = 1e6  # garbage in the padding changes nothing
    assert np.abs(trajectory_embedding(model, ws) - emb).max() < 1e-5


# --- the whole suite -------------------------------------------------------------------------

EXPECTED = {
    "forecast": ("ade_m@10", ("model", "constant_velocity")),
    "recovery": ("block_mae_m", ("model", "linear_interp")),
    "travel_time": ("od_mape", ("model", "historical_speed")),
    "next_location": ("mrr", ("model", "constant_velocity", "markov_h3")),
    "generation": ("jsd_mean", ("model", "constant_velocity", "resampled_steps")),
    "similarity": ("mean_rank", ("model", "resampled_path")),
}


def test_run_tasks_on_real_geolife_users(shared_data):
    """Every task, model and baselines, on windows of three real GeoLife users (people, ~5 s)."""
    import json

    import pandas as pd

    from trajfm.data.readers import read_file
    from trajfm.evaluate.tasks import parse_key

    files = [
        p for u in ("000", "001", "002") for p in sorted((shared_data / "geolife" / u / "Trajectory").glob("*.plt"))[:4]
    ]
    sets = cleaned_windows(pd.concat([read_file(p).points for p in files], ignore_index=True))
    test = sets["test"].subset(np.arange(min(len(sets["test"]), 80)))
    model = make_model(sets["train"], objective="mixed", head="mixture")
    m = run_tasks(model, test, train_ws=sets["train"], params={"forecast": {"minutes": (0.5, 1)}})
    assert finite_floats(m) and json.loads(json.dumps(m)) == m
    for task, (metric, predictors) in EXPECTED.items():
        for p in predictors:
            assert f"{task}.{metric}.{p}" in m, (task, p)
    assert {parse_key(k)[0] for k in m} == set(TASKS)
    assert "forecast.fde_m@0p5min.model" in m
    assert m["next_location.resolution"] >= 11  # people move metres per fix, vessels hundreds
    base = run_tasks(None, test, train_ws=sets["train"], tasks=["travel_time", "next_location"])
    assert base == {
        k: v for k, v in m.items() if k.split(".")[0] in ("travel_time", "next_location") and not k.endswith(".model")
    }


def test_windows_longer_than_the_model_block_are_cut_for_every_predictor():
    NS = 1_000_000_000
    ws = windows_from_tracks([(f"s{k}", *straight_track(100, 60.0, 80.0, 30 * NS, lat0=40 + k)) for k in range(3)], 100)
    model = make_model(ws, block_size=64)
    m = run_tasks(model, ws, ["next_location", "similarity"], train_ws=ws)
    assert m["next_location.n_pairs"] == 3 * 62  # points 1..62 of the first 64 have a next point
    assert m["next_location.acc@1.constant_velocity"] == 1.0  # straight and steady: always right
    assert m["similarity.n_windows"] == 3


def test_mean_std_over_seeded_runs(ais):
    from trajfm.evaluate.tasks import mean_std

    test = ais["test"].subset(np.arange(30))
    runs = [run_task("generation", make_model(ais["train"], seed=s, head="mixture"), test, seed=s) for s in range(3)]
    mean, std = mean_std(runs)
    k = "generation.jsd_step_m.model"
    assert mean[k] == pytest.approx(np.mean([r[k] for r in runs])) and std[k] > 0
    assert std["generation.n_windows"] == 0.0
    with pytest.raises(ValueError):
        mean_std([])
