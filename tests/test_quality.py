"""Great Expectations suites and the quality gate on canonical points.

A clean frame passes both stages; each defect (lat 91, null lon, time going backwards inside a
trajectory, a speed spike, a too-short trajectory) fails the gate with a message naming the
expectation, its column and the unexpected count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

for _key, _value in {
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}.items():
    os.environ.setdefault(_key, _value)

# The imports below come after the switches above: the libraries read them when first imported.
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from trajfm.data.schema import to_canonical  # noqa: E402
from trajfm.geo import offset_lonlat  # noqa: E402
from trajfm.quality import ValidationFailed, gate, validate_points  # noqa: E402
from trajfm.quality.suites import derive_columns, processed_suite, raw_points_suite, resolve_params  # noqa: E402

V_MAX = 30.0  # m/s, a generous vessel limit
T0 = pd.Timestamp("2020-06-30T00:00:00Z")


def _track(traj_id: str, n: int, lon0: float, lat0: float, speed_mps: float = 6.0, dt_s: float = 60.0) -> list[dict]:
    """A straight track heading north-east at ``speed_mps``, one fix every ``dt_s`` seconds."""
    step = speed_mps * dt_s / np.sqrt(2)
    rows, lon, lat = [], lon0, lat0
    for i in range(n):
        rows.append(
            {
                "traj_id": traj_id,
                "obj_id": traj_id.split("-")[0],
                "t": T0 + pd.Timedelta(seconds=dt_s * i),
                "lon": float(lon),
                "lat": float(lat),
                "kind": "vessel",
                "source": "synthetic",
            }
        )
        lon, lat = offset_lonlat(lon, lat, step, step)
    return rows


@pytest.fixture
def points() -> pd.DataFrame:
    """Three clean vessel tracks (12 fixes each, 6 m/s, 60 s), canonical dtypes and order."""
    rows = (
        _track("367001-0", 12, -74.02, 40.60)
        + _track("367002-0", 12, -73.95, 40.55)
        + _track("367003-0", 12, -74.10, 40.65)
    )
    return to_canonical(pd.DataFrame(rows))


PARAMS = {"v_max_mps": V_MAX, "min_points": 5}


def _row(points: pd.DataFrame, traj_id: str, k: int) -> int:
    """Row label of the k-th fix of ``traj_id``."""
    return int(points.index[points["traj_id"] == traj_id][k])


def _failed(report, column):
    return [r for r in report.results if r["column"] == column and not r["success"]]


def test_valid_points_pass_both_stages(points):
    for stage in ("raw", "processed"):
        report = validate_points(points, stage, PARAMS)
        assert report.success, report.to_markdown()
        assert gate(report) is report
        assert report.n_rows == len(points) and report.n_trajectories == 3
        assert all(r["success"] and r["unexpected_count"] == 0 for r in report.results)
    assert {r["column"] for r in report.results} >= {
        "traj_id",
        "obj_id",
        "t",
        "lon",
        "lat",
        "dt_s",
        "speed_mps",
        "traj_len",
    }


def _lat_91(points):
    points.loc[_row(points, "367002-0", 4), "lat"] = 91.0
    return points


def _null_lon(points):
    points.loc[_row(points, "367001-0", 7), "lon"] = np.nan
    return points


def _time_backwards(points):
    # Fix 6 of the trajectory carries a time 10 s before fix 5: one non-increasing step.
    i5, i6 = _row(points, "367003-0", 5), _row(points, "367003-0", 6)
    points.loc[i6, "t"] = points.loc[i5, "t"] - pd.Timedelta(seconds=10)
    return points


def _speed_spike(points):
    # The last fix jumps 20 km in 60 s (333 m/s): one step above v_max.
    i = _row(points, "367001-0", 11)
    lon, lat = offset_lonlat(points.loc[i, "lon"], points.loc[i, "lat"], 20_000.0, 0.0)
    points.loc[i, ["lon", "lat"]] = [float(lon), float(lat)]
    return points


def _short_trajectory(points):
    short = to_canonical(pd.DataFrame(_track("367004-0", 3, -74.0, 40.7)))
    return to_canonical(pd.concat([points, short], ignore_index=True))


@pytest.mark.parametrize(
    "corrupt, stage, column, check, count, traj_id",
    [
        (_lat_91, "raw", "lat", "lat_range", 1, "367002-0"),
        (_null_lon, "raw", "lon", "not_null", 1, "367001-0"),
        (_time_backwards, "processed", "dt_s", "time_increasing", 1, "367003-0"),
        (_speed_spike, "processed", "speed_mps", "speed", 1, "367001-0"),
        (_short_trajectory, "processed", "traj_len", "traj_length", 1, "367004-0"),
    ],
    ids=["lat_91", "null_lon", "time_backwards", "speed_spike", "short_trajectory"],
)
def test_defect_fails_gate_with_named_expectation_and_count(points, corrupt, stage, column, check, count, traj_id):
    bad = corrupt(points.copy())
    report = validate_points(bad, stage, PARAMS)
    assert not report.success
    failed = _failed(report, column)
    assert len(failed) == 1, report.to_markdown()
    assert failed[0]["check"] == check and failed[0]["critical"]
    assert failed[0]["unexpected_count"] == count
    assert traj_id in failed[0]["examples"]

    with pytest.raises(ValidationFailed) as excinfo:
        gate(report)
    message = str(excinfo.value)
    expectation = failed[0]["expectation"]
    assert f"{expectation} on column '{column}'" in message
    assert f"[{check}]: {count} unexpected" in message
    assert excinfo.value.report is report
    assert isinstance(excinfo.value, ValueError)


def test_gate_message_lists_every_critical_failure(points):
    bad = _speed_spike(_lat_91(points.copy()))
    report = validate_points(bad, "processed", PARAMS)
    with pytest.raises(ValidationFailed) as excinfo:
        gate(report)
    message = str(excinfo.value)
    assert "critical expectation(s)" in message
    assert "column 'lat' [lat_range]: 1 unexpected" in message
    # The spike, and lat 91 (~55 km north in 60 s) on both sides of that fix.
    assert "column 'speed_mps' [speed]: 3 unexpected" in message


def test_derived_columns_follow_row_order(points):
    derived = derive_columns(points)
    first = derived.groupby("traj_id", sort=False).head(1).index
    assert derived.loc[first, ["dt_s", "speed_mps"]].isna().all().all()
    rest = derived.drop(index=first)
    np.testing.assert_allclose(rest["dt_s"], 60.0)
    np.testing.assert_allclose(rest["speed_mps"], 6.0, rtol=1e-3)
    assert derived["traj_len"].notna().sum() == 3 and (derived["traj_len"].dropna() == 12).all()
    # Shuffled rows: time runs backwards somewhere, which must be seen, not repaired.
    shuffled = derive_columns(points.sample(frac=1.0, random_state=0))
    assert (shuffled["dt_s"] <= 0).any()


def test_warning_severity_and_mostly_do_not_fail_the_gate(points):
    bad = _speed_spike(points.copy())
    warned = validate_points(bad, "processed", {**PARAMS, "severity": {"speed": "warning"}})
    assert warned.success and gate(warned) is warned
    assert [r["check"] for r in warned.failed_warnings] == ["speed"]
    # One bad step of 33 is within mostly=0.95.
    tolerant = validate_points(bad, "processed", {**PARAMS, "mostly": {"speed": 0.95}})
    assert tolerant.success and not tolerant.failed_warnings


def test_chunked_validation_merges_counts(points):
    bad = _short_trajectory(_speed_spike(_time_backwards(_lat_91(points.copy()))))
    whole = validate_points(bad, "processed", PARAMS)
    chunked = validate_points(bad, "processed", PARAMS, chunk_rows=10)  # cuts through trajectories
    assert [(r["column"], r["success"], r["unexpected_count"]) for r in chunked.results] == [
        (r["column"], r["success"], r["unexpected_count"]) for r in whole.results
    ]
    assert chunked.success is whole.success is False


def test_report_markdown_and_dict(points):
    report = validate_points(_lat_91(points.copy()), "raw", PARAMS)
    md = report.to_markdown()
    assert "### Data quality: `raw` FAILED" in md
    assert "| severity | expectation | column | unexpected |" in md
    assert "| **FAIL** | critical | `expect_column_values_to_be_between` | `lat` | 1 |" in md
    d = json.loads(json.dumps(report.to_dict()))
    assert d["stage"] == "raw" and d["success"] is False and d["n_rows"] == len(points)
    keys = {"expectation", "column", "success", "unexpected_count", "unexpected_percent", "critical"}
    assert all(keys <= set(r) for r in d["results"])
    lat = next(r for r in d["results"] if r["column"] == "lat" and r["expectation"].endswith("between"))
    assert lat["unexpected_percent"] == pytest.approx(100 / len(points))


def test_file_context_builds_data_docs(points, tmp_path):
    first = validate_points(points, "processed", PARAMS, context_root=tmp_path)
    second = validate_points(_lat_91(points.copy()), "processed", PARAMS, context_root=tmp_path)
    assert first.success and not second.success
    index = tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert second.data_docs == str(index) and index.is_file()
    assert list((tmp_path / "gx" / "expectations").glob("*.json"))


def test_suites_carry_severity_and_mostly():
    raw = raw_points_suite()
    assert all(e.meta["severity"] in ("critical", "warning") for e in raw.expectations)
    suite = processed_suite({"v_max_mps": 12.5, "min_points": 4, "mostly": {"speed": 0.99}})
    speed = next(e for e in suite.expectations if e.column == "speed_mps")
    assert speed.max_value == 12.5 and speed.mostly == 0.99 and speed.meta["check"] == "speed"
    length = next(e for e in suite.expectations if e.column == "traj_len")
    assert length.min_value == 4


def test_bad_inputs_raise(points):
    with pytest.raises(ValueError, match="unknown stage"):
        validate_points(points, "final")
    with pytest.raises(ValueError, match="lacks required columns"):
        validate_points(points.drop(columns=["obj_id"]), "raw")
    with pytest.raises(ValueError, match="unknown checks"):
        resolve_params({"mostly": {"sped": 0.9}})
    with pytest.raises(ValueError, match="v_max_mps"):
        resolve_params({"v_max_mps": 0})


def test_empty_frame_fails_the_gate_with_a_clear_message(points):
    """Issue 19.9: every expectation holds on 0 rows, but an empty stage must stop the run here."""
    report = validate_points(points.iloc[:0], "processed", PARAMS)
    assert not report.success and report.n_rows == 0
    with pytest.raises(ValidationFailed, match="the stage has 0 rows"):
        gate(report)


def test_importing_library_does_not_import_gx_or_mlflow():
    code = (
        "import sys, trajfm.quality, trajfm.registry\n"
        "heavy = [m for m in ('great_expectations', 'mlflow', 'prefect') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    )


def test_a_file_context_is_validated_by_one_process_at_a_time(tmp_path):
    """Two pipelines on one data root share its GX file context: the second validation waits for
    the first (GX's file stores are not safe for concurrent writers: tests/test_faults.py)."""
    import threading
    import time

    from trajfm.quality.gate import context_lock

    order = []

    def second():
        with context_lock(tmp_path / "gx"):
            order.append("second")

    with context_lock(tmp_path / "gx"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)  # long enough for the thread to reach the lock, which it must not pass
        order.append("first done")
    t.join(10)
    assert order == ["first done", "second"]
    with context_lock(None):  # an ephemeral context: nothing to lock
        pass
