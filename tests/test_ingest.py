"""Ingest: accounting across files, canonical output on disk, cache reuse, lon/lat round trip."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest

from trajfm.data.catalog import embedded_files
from trajfm.data.ingest import IngestSummary, ingest, load_points, load_quarantine, read_ingest_summary
from trajfm.data.readers import read_file
from trajfm.data.schema import POINT_COLUMNS

BAD_TRAJ = "\n".join(
    [
        "*T*,11111111-2222-3333-4444-555555555555,terrestrial,3,0,*P*,terrestrial,2,1,1,0,"
        "1,2020-12-08 00:00:00,-74.0,40.6,1,2020-12-08 00:01:00,-74.0,91,1,2020-12-08 00:02:00,0,0",
        "not a record",
    ]
)


@pytest.fixture
def sources(tmp_path):
    """The small real slice plus a file with 3 bad rows (lat 91, null island, bad header)."""
    src = tmp_path / "src"
    src.mkdir()
    small = src / "NYHarbor_2020_12_08.traj"
    shutil.copy(embedded_files("small")[0], small)
    bad = src / "broken.traj"
    bad.write_text(BAD_TRAJ + "\n")
    return [small, bad]


def test_ingest_accounts_for_every_row(tmp_path, sources):
    out = ingest(sources, root=tmp_path / "root")
    assert out.parent.name == "ingest" and out.parent.parent == (tmp_path / "root").resolve()
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows_read"] == 9091 + 4
    assert m["rows_kept"] == 9091 + 1
    assert m["rows_quarantined"] == 3
    assert m["rows_read"] == m["rows_kept"] + m["rows_quarantined"]
    assert m["quarantined_by_reason"] == {"coord_out_of_range": 1, "null_island": 1, "parse_error": 1}
    assert m["per_file"]["broken.traj"]["rows_read"] == 4
    assert sum(f["rows_read"] for f in m["per_file"].values()) == m["rows_read"]
    assert m["files"]["points"]["rows"] == m["rows_kept"]
    assert m["files"]["quarantine"]["rows"] == m["rows_quarantined"]
    # kind=None: each format's default kind (vessel for AIS), recorded per file.
    assert len(m["sources"]) == 2 and m["params"]["kind"] is None
    assert m["per_file"]["broken.traj"]["kinds"] == ["vessel"]

    summary = read_ingest_summary(out)
    assert isinstance(summary, IngestSummary)
    assert (summary.rows_read, summary.rows_kept, summary.rows_quarantined) == (9095, 9092, 3)
    q = load_quarantine(out)
    assert sorted(q["reason"]) == ["coord_out_of_range", "null_island", "parse_error"]
    assert set(q.columns) >= {"file", "line", "raw", "reason", "detail"}


def test_ingest_points_are_canonical_sorted_and_keep_ns_utc_time(tmp_path, sources):
    out = ingest(sources, root=tmp_path / "root")
    schema = pq.read_schema(out / "points.parquet")
    assert str(schema.field("t").type) == "timestamp[ns, tz=UTC]"
    pts = load_points(out)
    assert list(pts.columns[: len(POINT_COLUMNS)]) == POINT_COLUMNS
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    order = pts.sort_values(["traj_id", "t"], kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(pts, order)


def test_lon_lat_order_survives_read_parquet_read(tmp_path, sources):
    """A known fix of the file lands with the right lon and lat after parquet and back."""
    # First point of NYHarbor_2020_12_08.traj: 367448070,2020-12-08 02:21:44,-74.0649,40.61758
    out = ingest(sources, root=tmp_path / "root")
    pts = load_points(out)
    row = pts[(pts["obj_id"] == "367448070") & (pts["t"] == pd.Timestamp("2020-12-08 02:21:44", tz="UTC"))]
    assert len(row) == 1
    assert row["lon"].iloc[0] == -74.0649 and row["lat"].iloc[0] == 40.61758
    direct = read_file(sources[0]).points
    assert len(direct) == (pts["source"] == "NYHarbor_2020_12_08").sum()


def test_ingest_reuses_a_complete_directory(tmp_path, sources):
    root = tmp_path / "root"
    out = ingest(sources, root=root)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    again = ingest(list(reversed(sources)), root=root)  # source order does not matter
    assert again == out and (out / "manifest.json").stat().st_mtime_ns == stamp
    other = ingest(sources, root=root, params={"kind": "vehicle"})
    assert other != out
    assert set(load_points(other)["kind"]) == {"vehicle"}
    with pytest.raises(ValueError, match="unknown ingest params"):
        ingest(sources, root=root, params={"colour": "red"})


def test_ingest_rejects_duplicate_stems_and_missing_files(tmp_path, sources):
    twin_dir = tmp_path / "twin"
    twin_dir.mkdir()
    twin = twin_dir / "broken.traj"
    twin.write_text(BAD_TRAJ)
    with pytest.raises(ValueError, match="share the name"):
        ingest(sources + [twin], root=tmp_path / "root")
    with pytest.raises(FileNotFoundError):
        ingest([tmp_path / "nope.traj"], root=tmp_path / "root")


def test_ingest_of_an_empty_file(tmp_path):
    empty = tmp_path / "empty.traj"
    empty.write_text("")
    out = ingest([empty], root=tmp_path / "root")
    m = json.loads((out / "manifest.json").read_text())
    assert (m["rows_read"], m["rows_kept"], m["rows_quarantined"]) == (0, 0, 0)
    assert str(load_points(out)["t"].dtype) == "datetime64[ns, UTC]"
