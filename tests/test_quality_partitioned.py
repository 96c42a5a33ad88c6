"""Great Expectations per Dask partition, merged: the same report as validating the whole table.

Real AIS (the 9,091-point NY Harbor day) through ingest and preprocess (four part files), then
validated three ways -- one frame, per partition on the synchronous scheduler, per partition
on a LocalCluster of two workers -- with thresholds tight enough that real rows fail, plus
table-level expectations (uniqueness, min/max, row count) that are not row-wise.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trajfm.data.catalog import embedded_files
from trajfm.data.ingest import ingest
from trajfm.data.preprocess import preprocess, read_points
from trajfm.quality import ValidationFailed, gate, validate_points, validate_stage
from trajfm.quality.partitioned import merge_rule, plan_slices, stage_files

# Real AIS fails these: vessels faster than 5 m/s, segments under 60 resampled fixes.
TIGHT = {"v_max_mps": 5.0, "min_points": 60}


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    raw = ingest(embedded_files("small"), root=root)
    processed = preprocess(raw, scheduler="sync", npartitions=4)
    assert len(stage_files(processed)) == 4
    return {"raw": raw, "processed": processed}


def _table_level():
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectCompoundColumnsToBeUnique(column_list=["traj_id", "t"]),  # global
        e.ExpectColumnValuesToBeUnique(column="t"),  # global: AIS ships share report times
        e.ExpectColumnMaxToBeBetween(column="speed_mps", max_value=5.0),  # extreme
        e.ExpectColumnMinToBeBetween(column="lat", min_value=40.0),  # extreme
        e.ExpectTableRowCountToBeBetween(min_value=1, max_value=5000),  # row count
    ]


def _outcome(report) -> list[tuple]:
    return [
        (
            r["expectation"],
            r["column"],
            r["check"],
            r["success"],
            r["unexpected_count"],
            r["element_count"],
            r["considered_count"],
            r.get("observed_value"),
        )
        for r in report.results
    ]


def _whole(stage_dir, stage, params, extra=None):
    return validate_points(
        pd.concat([pd.read_parquet(f) for f in stage_files(stage_dir)], ignore_index=True),
        stage,
        params,
        extra_expectations=extra,
    )


def test_merge_rules():
    assert merge_rule("expect_column_values_to_be_between") == "rowwise"
    assert merge_rule("expect_column_values_to_not_be_null") == "rowwise"
    assert merge_rule("expect_column_pair_values_a_to_be_greater_than_b") == "rowwise"
    for t in (
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_increasing",
        "expect_compound_columns_to_be_unique",
        "expect_column_mean_to_be_between",
    ):
        assert merge_rule(t) == "global"
    assert merge_rule("expect_column_min_to_be_between") == merge_rule("expect_column_max_to_be_between") == "extreme"
    assert merge_rule("expect_table_row_count_to_be_between") == "row_count"


def test_partitions_follow_files_and_rows(stages):
    files = stage_files(stages["processed"])
    slices = plan_slices(files, partition_rows=500)
    assert {s.path for s in slices} == set(map(str, files))
    assert sum(s.stop - s.start for s in slices) == len(read_points(stages["processed"]))
    with pytest.raises(FileNotFoundError):
        stage_files(stages["processed"] / "nothing")


ROWS = 2500  # rows per partition: 4-6 partitions of the real stages


@pytest.fixture(scope="module")
def processed_reports(stages):
    """The processed stage validated as one frame and per partition on the synchronous scheduler."""
    extra = _table_level()
    whole = _whole(stages["processed"], "processed", TIGHT, extra)
    sync = validate_stage(
        stages["processed"],
        "processed",
        TIGHT,
        partitioned=True,
        partition_rows=ROWS,
        scheduler="sync",
        extra_expectations=extra,
    )
    return whole, sync


def test_raw_stage_partitions_equal_whole_frame_on_real_ais(stages):
    whole = _whole(stages["raw"], "raw", TIGHT)
    parts = validate_stage(stages["raw"], "raw", TIGHT, partitioned=True, partition_rows=ROWS, scheduler="sync")
    assert len(plan_slices(stage_files(stages["raw"]), ROWS)) >= 3  # one ingest file, cut into row ranges
    assert _outcome(parts) == _outcome(whole)
    assert (parts.success, parts.n_rows, parts.n_trajectories) == (whole.success, whole.n_rows, whole.n_trajectories)


def test_processed_stage_partitions_equal_whole_frame_on_real_ais(processed_reports):
    whole, parts = processed_reports
    assert _outcome(parts) == _outcome(whole)
    assert (parts.success, parts.n_rows, parts.n_trajectories) == (whole.success, whole.n_rows, whole.n_trajectories)
    # Real rows fail the tight speed and length checks and three of the table-level checks.
    failed = {r["check"] or r["expectation"] for r in parts.results if not r["success"]}
    assert {
        "speed",
        "traj_length",
        "expect_column_values_to_be_unique",
        "expect_column_max_to_be_between",
        "expect_table_row_count_to_be_between",
    } <= failed
    assert "expect_compound_columns_to_be_unique" not in failed
    with pytest.raises(ValidationFailed, match=r"speed_mps' \[speed\]: \d+ unexpected"):
        gate(parts)


@pytest.mark.slow
def test_local_cluster_partitions_equal_sync_and_whole_frame(stages, processed_reports):
    from distributed import LocalCluster

    whole, sync = processed_reports
    extra = _table_level()
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        local = validate_stage(
            stages["processed"],
            "processed",
            TIGHT,
            partitioned=True,
            partition_rows=ROWS,
            dask_address=cluster.scheduler_address,
            extra_expectations=extra,
        )
        # In-memory frames take the same route: partitions of chunk_rows rows on the workers.
        frame = validate_points(
            read_points(stages["processed"]),
            "processed",
            TIGHT,
            chunk_rows=4000,
            dask_address=cluster.scheduler_address,
            extra_expectations=extra,
        )
    assert _outcome(local) == _outcome(sync) == _outcome(whole) == _outcome(frame)
    assert local.success is sync.success is whole.success is False


def _write_parts(df: pd.DataFrame, folder, cuts: list[int]) -> None:
    folder.mkdir(parents=True)
    bounds = [0, *cuts, len(df)]
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(
            pa.Table.from_pandas(df.iloc[lo:hi], preserve_index=False),
            folder / f"part-{i:05d}.parquet",
            row_group_size=97,
        )


def test_cut_and_scattered_trajectories_merge_exactly(stages, tmp_path, monkeypatch):
    """Defects, trajectories cut between files, and a trajectory whose rows lie in three files."""
    df = read_points(stages["processed"])
    ids = df["traj_id"].drop_duplicates().tolist()
    rows = lambda tid: np.flatnonzero(df["traj_id"].to_numpy() == tid)  # noqa: E731
    df.loc[rows(ids[1])[3], "lat"] = 91.0
    df.loc[rows(ids[2])[5], "t"] = df.loc[rows(ids[2])[4], "t"] - pd.Timedelta(seconds=10)
    df.loc[rows(ids[0])[2], "lon"] = np.nan
    # The tail of the first trajectory moves to the end of the table: it comes back in the last file.
    tail = rows(ids[0])[-5:]
    df = pd.concat([df.drop(index=tail), df.loc[tail]], ignore_index=True)
    cut_mid = int(len(df) * 0.4)  # inside some trajectory: the rows on both sides fall in two files
    _write_parts(df, tmp_path / "points.parquet", [cut_mid, int(len(df) * 0.7)])
    params = {"v_max_mps": 30.0, "min_points": 25}

    whole = validate_points(df, "processed", params)
    import trajfm.quality.partitioned as partitioned

    calls = []
    real = partitioned.validate_partition
    monkeypatch.setattr(partitioned, "validate_partition", lambda *a, **k: calls.append(len(a)) or real(*a, **k))
    parts = validate_stage(
        tmp_path / "points.parquet", "processed", params, partitioned=True, partition_rows=2000, scheduler="sync"
    )
    n_slices = len(plan_slices(stage_files(tmp_path / "points.parquet"), 2000))
    assert (
        n_slices >= 4 and calls.count(2) == n_slices and calls.count(5) >= 3
    )  # cut ones validated again, with context
    assert _outcome(parts) == _outcome(whole)
    failed = {r["check"]: r["unexpected_count"] for r in parts.results if not r["success"]}
    assert failed["lat_range"] == 1 and failed["not_null"] == 1 and failed["time_increasing"] >= 1
    assert parts.n_trajectories == whole.n_trajectories == len(ids)


def test_data_docs_written_once_from_the_merged_result(stages, tmp_path):
    report = validate_stage(
        stages["processed"],
        "processed",
        TIGHT,
        context_root=tmp_path,
        partitioned=True,
        partition_rows=ROWS,
        scheduler="sync",
    )
    index = tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
    assert report.data_docs == str(index) and index.is_file()
    stored = list((tmp_path / "gx" / "uncommitted" / "validations").rglob("*.json"))
    assert len(stored) == 1  # one validation result for the whole stage, not one per partition
    result = json.loads(stored[0].read_text())
    assert result["meta"]["trajfm_partitions"] == len(plan_slices(stage_files(stages["processed"]), ROWS))
    by_column = {
        (r["expectation_config"]["kwargs"].get("column"), r["expectation_config"]["meta"]["check"]): (
            r["success"],
            r["result"].get("unexpected_count"),
        )
        for r in result["results"]
    }
    for r in report.results:
        assert by_column[(r["column"], r["check"])] == (r["success"], r["unexpected_count"])
    assert result["success"] is False
    assert list((tmp_path / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations").rglob("*.html"))


def test_bad_arguments(stages):
    with pytest.raises(ValueError, match="unknown stage"):
        validate_stage(stages["raw"], "final")
    with pytest.raises(ValueError, match="scheduler"):
        validate_stage(stages["raw"], "raw", partitioned=True, scheduler="threads")
    with pytest.raises(ValueError, match="partition_rows"):
        plan_slices(stage_files(stages["raw"]), 0)
