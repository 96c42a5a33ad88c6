"""The foundation-model API (issue 15): ``trajfm.load(uri).forecast(points, horizon=...)`` and
``trajfm forecast``, on the real NY Harbor AIS slice (tracktable-data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_evaluate_cli import train_tiny

import trajfm
from trajfm.forecaster import radius_columns

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("forecast_root")
    train_dir = train_tiny(root, steps=6)
    points = pd.read_parquet(sorted(root.glob("preprocess/*/points.parquet"))[0])  # canonical: obj_id, kind, source too
    return root, train_dir, points


def test_forecast_of_every_trajectory_with_error_radii(trained):
    _, train_dir, points = trained
    fc = trajfm.load(train_dir)
    assert fc.interval_s == pytest.approx(60.0, rel=0.01)  # the embedded AIS is resampled to 60 s
    out = fc.forecast(points, horizon=5)
    n_traj = points["traj_id"].nunique()
    assert n_traj > 10 and len(out) == n_traj * 5
    assert list(out.columns) == ["traj_id", "step", "t", "lon", "lat", *radius_columns()]
    assert set(out["traj_id"]) == set(points["traj_id"])
    assert all(steps == [1, 2, 3, 4, 5] for steps in out.groupby("traj_id")["step"].apply(list))
    last_t = points.groupby("traj_id")["t"].max()
    first = out[out["step"] == 1].set_index("traj_id")
    assert (first["t"] > last_t.loc[first.index]).all()
    assert out["lon"].between(-75.5, -72.5).all() and out["lat"].between(39.5, 41.5).all()  # degrees, order kept
    radii = out[radius_columns()].to_numpy()
    assert np.isfinite(radii).all() and (np.diff(radii, axis=1) >= 0).all() and (radii[:, 0] >= 0).all()
    by_step = out.groupby("step")["radius_m_q50"].first()
    assert by_step.iloc[-1] > by_step.iloc[0]  # uncertainty grows with the horizon


def test_forecast_is_batched_and_deterministic(trained):
    _, train_dir, points = trained
    a = trajfm.load(train_dir).forecast(points, horizon=3)
    small = trajfm.load(train_dir)
    small.batch_size = 4
    b = small.forecast(points, horizon=3)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6)


def test_off_cadence_points_are_refused_or_resampled(trained):
    _, train_dir, points = trained
    fc = trajfm.load(train_dir)
    two = points[points["traj_id"].isin(points["traj_id"].unique()[:2])]
    by = two.groupby("traj_id")
    fast = two.assign(t=by["t"].transform("first") + pd.to_timedelta(by.cumcount() * 10, unit="s"))
    with pytest.raises(ValueError, match=r"not at the model's cadence \(~60 s"):
        fc.forecast(fast, horizon=3)
    out = fc.forecast(fast, horizon=3, resample_s="model")
    assert len(out) == 6
    with pytest.raises(ValueError, match="lack columns"):
        fc.forecast(two.drop(columns="lat"), horizon=3)
    with pytest.raises(ValueError, match="horizon"):
        fc.forecast(two, horizon=0)


def test_a_mixture_head_gives_position_quantiles(tmp_path):
    train_dir = train_tiny(tmp_path, steps=6, head="mixture", n_mixture=3)
    points = pd.read_parquet(sorted(tmp_path.glob("preprocess/*/points.parquet"))[0])
    some = points[points["traj_id"].isin(points["traj_id"].unique()[:3])]
    out = trajfm.load(train_dir).forecast(some, horizon=4, n_samples=20, seed=1)
    for axis in ("lon", "lat"):
        q = out[[f"{axis}_q{p}" for p in ("10", "25", "50", "75", "90")]].to_numpy()
        assert (np.diff(q, axis=1) >= 0).all()
    again = trajfm.load(train_dir).forecast(some, horizon=4, n_samples=20, seed=1)
    pd.testing.assert_frame_equal(out, again)


def test_load_from_the_registry_and_without_mlflow_for_a_path(trained):
    from trajfm.evaluate.run import run_evaluation
    from trajfm.registry.register import register_training
    from trajfm.store import read_manifest

    root, train_dir, points = trained
    features_dir = read_manifest(train_dir)["features_dir"]
    metrics = run_evaluation(features_dir, train_dir, root=root, context_len=12, horizon=6)
    register_training(train_dir, features_dir, metrics, root=root)
    some = points[points["traj_id"].isin(points["traj_id"].unique()[:4])]
    from_registry = trajfm.load("models:/trajfm@champion", data_root=root).forecast(some, horizon=3)
    from_path = trajfm.load(train_dir / "model.pt").forecast(some, horizon=3)
    pd.testing.assert_frame_equal(from_registry, from_path)
    code = (
        "import sys, pandas as pd, trajfm\n"
        f"fc = trajfm.load({str(train_dir)!r})\n"
        f"fc.forecast(pd.read_parquet({str(sorted(root.glob('preprocess/*/points.parquet'))[0])!r})"
        ".head(200), horizon=2)\n"
        "print('mlflow' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_cli_forecast_writes_parquet_and_errors_in_one_line(trained, tmp_path, capsys):
    from trajfm.cli import main

    _, train_dir, points = trained
    data = tmp_path / "x.parquet"
    points.to_parquet(data)
    out = tmp_path / "y.parquet"
    assert main(["forecast", "--model", str(train_dir), "--data", str(data), "--horizon", "4", "--out", str(out)]) == 0
    assert "trajectories x 4 steps" in capsys.readouterr().out
    got = pd.read_parquet(out)
    assert len(got) == points["traj_id"].nunique() * 4 and "radius_m_q90" in got.columns
    points.head(300).to_csv(tmp_path / "x.csv", index=False)
    assert (
        main(
            ["forecast", "--model", str(train_dir), "--data", str(tmp_path / "x.csv"), "--out", str(tmp_path / "y.csv")]
        )
        == 0
    )
    assert len(pd.read_csv(tmp_path / "y.csv")) > 0
    capsys.readouterr()
    assert (
        main(["forecast", "--model", str(train_dir), "--data", str(tmp_path / "nope.parquet"), "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.parquet" in err
