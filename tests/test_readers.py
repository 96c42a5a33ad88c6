"""Readers: real tracktable-data AIS files, and malformed input written here, line by line.

Every test checks the accounting: rows_read == kept + quarantined, each rejection with its reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajfm.data.catalog import AIS_FILES, SMALL_SLICE, embedded_files
from trajfm.data.readers import READERS, detect_format, read_file
from trajfm.data.schema import POINT_COLUMNS, REASONS

UUID = "92d181d1-0745-445a-8432-f432a5982a1c"
CSV_HEADER = (
    "BaseDateTime,LON,LAT,MMSI,SOG,COG,Heading,VesselName,IMO,CallSign,VesselType,Status,"
    "Length,Width,Draft,Cargo,TranscieverClass,ETA"
)


def traj_record(points, n_points=None, uuid=UUID) -> str:
    """One .traj line: trajectory header, point header, then each point's fields."""
    header = (
        ["*T*"] + ([uuid] if uuid else []) + ["terrestrial", str(len(points) if n_points is None else n_points), "0"]
    )
    header += ["*P*", "terrestrial", "2", "1", "1", "0"]
    return ",".join(header + [",".join(p) for p in points])


def csv_row(t, lon, lat, mmsi="367000001", sog="5.0", cog="90.0", name="TEST SHIP") -> str:
    return ",".join(
        [t, lon, lat, mmsi, sog, cog, "511.0", name, "", "", "70.0", "0.0", "100.0", "20.0", "", "", "A", ""]
    )


def check_accounting(result) -> None:
    assert result.rows_read == len(result.points) + len(result.quarantine)
    assert set(result.quarantine["reason"]) <= set(REASONS)
    assert list(result.quarantine.columns) == ["file", "line", "raw", "reason", "detail"]


def reasons_by_line(result) -> dict[int, list[str]]:
    return result.quarantine.groupby("line")["reason"].apply(list).to_dict()


# ---------------------------------------------------------------------------------------------
# Real files


def test_embedded_catalog_lists_the_ais_files():
    paths = embedded_files()
    assert [p.name for p in paths] == list(AIS_FILES)
    assert all(p.is_file() for p in paths)
    assert [p.name for p in embedded_files("small")] == [SMALL_SLICE]
    with pytest.raises(ValueError, match="unknown embedded"):
        embedded_files("nope.traj")


def test_small_real_traj_file_reads_every_point():
    result = read_file(embedded_files("small")[0])
    check_accounting(result)
    pts = result.points
    assert result.format == "tracktable"
    assert result.rows_read == 9091 and len(pts) == 9091 and result.quarantine.empty
    assert list(pts.columns[: len(POINT_COLUMNS)]) == POINT_COLUMNS
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    assert pts["traj_id"].str.startswith("NYHarbor_2020_12_08:").all()
    assert pts["traj_id"].nunique() == 38
    assert set(pts["kind"]) == {"vessel"} and set(pts["source"]) == {"NYHarbor_2020_12_08"}
    # New York Harbor: lon about -74, lat about 40.6 (lon is the first coordinate in the file).
    assert pts["lon"].between(-75, -73).all() and pts["lat"].between(40, 41.5).all()
    first = pts.iloc[0]
    assert (first["obj_id"], first["lon"], first["lat"]) == ("367448070", -74.0649, 40.61758)
    assert first["t"] == pd.Timestamp("2020-12-08 02:21:44", tz="UTC")


def test_real_marinecadastre_csv_reads_sog_and_unwraps_cog():
    result = read_file(embedded_files("csv")[0])
    check_accounting(result)
    assert result.format == "marinecadastre" and result.rows_read == 8689
    pts = result.points
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    first = pts.iloc[0]  # 2020-06-30T00:00:00,-74.07157,40.64409,367000140,0.0,-60.6,...
    assert (first["obj_id"], first["lon"], first["lat"]) == ("367000140", -74.07157, 40.64409)
    assert first["cog"] == pytest.approx(-60.6 + 409.6)
    assert pts["cog"].dropna().between(0, 360, inclusive="left").all()
    assert pts["traj_id"].str.startswith("NYHarbor_2020_06_30_first_hour:").all()


# ---------------------------------------------------------------------------------------------
# Malformed .traj


def test_traj_malformed_points_are_quarantined_with_reasons(tmp_path):
    good = ("367000001", "2020-12-08 00:00:00", "-74.0", "40.6")
    bad_points = [
        (("367000001", "2020-12-08 00:01:00", "abc", "40.6"), "parse_error"),
        (("367000001", "2020-12-08 00:02:00", "-74.0", "nan"), "nonfinite_coord"),
        (("367000001", "2020-12-08 00:03:00", "-74.0", "inf"), "nonfinite_coord"),
        (("367000001", "2020-12-08 00:04:00", "-74.0", "91"), "coord_out_of_range"),
        (("367000001", "2020-12-08 00:05:00", "181", "40.6"), "coord_out_of_range"),
        (("367000001", "2020-12-08 00:06:00", "0", "0"), "null_island"),
        (("367000001", "2020-13-45 99:00:00", "-74.0", "40.6"), "bad_time"),
        (("367000001", "1970-01-01 00:00:00", "-74.0", "40.6"), "bad_time"),
        (("367000001", "2999-01-01 00:00:00", "-74.0", "40.6"), "bad_time"),
        (("", "2020-12-08 00:09:00", "-74.0", "40.6"), "missing_value"),
        (("367000001", "2020-12-08 00:10:00", "", "40.6"), "missing_value"),
    ]
    path = tmp_path / "bad.traj"
    path.write_text(traj_record([good] + [p for p, _ in bad_points]) + "\n")
    result = read_file(path)
    check_accounting(result)
    assert result.rows_read == 1 + len(bad_points)
    assert len(result.points) == 1
    assert result.quarantine["reason"].tolist() == [r for _, r in bad_points]
    assert (result.quarantine["line"] == 1).all()
    assert result.quarantine["raw"].iloc[0] == "367000001,2020-12-08 00:01:00,abc,40.6"


def test_traj_wrong_field_counts_header_garbage_and_truncated_last_line(tmp_path):
    p = lambda i, lat="40.6": ("367000002", f"2020-12-08 00:0{i}:00", "-74.0", lat)  # noqa: E731
    missing_lat = ("367000002", "2020-12-08 00:01:00", "-74.0")  # 3 fields instead of 4
    lines = [
        "# a comment line is not a record",
        traj_record([p(0), p(1), p(2)]),  # line 2: fine
        traj_record([p(0), missing_lat, p(2), p(3)], n_points=4),  # line 3: fields shift
        "garbage,not,a,record",  # line 4: no header
        traj_record([p(0), p(1)], uuid=None),  # line 5: old format without uuid
    ]
    truncated = traj_record([p(0), p(1), p(2)])[: -len(",40.6")]  # line 6: cut mid-point
    path = tmp_path / "shifted.traj"
    path.write_text("\n".join(lines + [truncated]))  # no final newline either
    result = read_file(path)
    check_accounting(result)
    by_line = reasons_by_line(result)
    # 3 good + (1 good, 3 bad) + 1 bad header + 2 good + (2 good, 1 bad)
    assert result.rows_read == 3 + 4 + 1 + 2 + 3
    assert len(result.points) == 3 + 1 + 2 + 2
    assert by_line == {3: ["parse_error"] * 3, 4: ["parse_error"], 6: ["parse_error"]}
    assert (result.points["traj_id"] == "shifted:L5").sum() == 2
    detail_6 = result.quarantine.loc[result.quarantine["line"] == 6, "detail"].iloc[0]
    assert "incomplete point" in detail_6


def test_traj_non_utf8_bytes_quarantine_only_the_affected_point(tmp_path):
    good = traj_record([("367000003", "2020-12-08 00:00:00", "-74.0", "40.6")]).encode()
    record = traj_record(
        [("367000003", "2020-12-08 00:00:00", "-74.0", "40.6"), ("3670\xff", "2020-12-08 00:01:00", "-74.0", "40.6")]
    ).encode("latin-1")
    path = tmp_path / "bytes.traj"
    path.write_bytes(good + b"\n" + record + b"\n")
    result = read_file(path)
    check_accounting(result)
    assert result.rows_read == 3 and len(result.points) == 2
    assert reasons_by_line(result) == {2: ["parse_error"]}
    assert "\ufffd" in result.quarantine["raw"].iloc[0]


def test_empty_files_read_zero_rows(tmp_path):
    for name, text in (
        ("empty.traj", ""),
        ("empty.csv", ""),
        ("header_only.csv", CSV_HEADER + "\n"),
        ("blank.traj", "\n\n"),
    ):
        path = tmp_path / name
        path.write_text(text)
        result = read_file(path)
        check_accounting(result)
        assert result.rows_read == 0 and result.points.empty and result.quarantine.empty
        assert str(result.points["t"].dtype) == "datetime64[ns, UTC]"


def test_crlf_line_endings(tmp_path):
    path = tmp_path / "crlf.traj"
    rec = traj_record([("367000004", "2020-12-08 00:00:00", "-74.0", "40.6")] * 1)
    path.write_bytes((rec + "\r\n" + rec.replace(UUID, UUID[:-1] + "b") + "\r\n").encode())
    result = read_file(path)
    check_accounting(result)
    assert len(result.points) == 2 and result.points["lat"].tolist() == [40.6, 40.6]


# ---------------------------------------------------------------------------------------------
# Malformed MarineCadastre CSV


def test_csv_malformed_lines_are_quarantined_with_reasons(tmp_path):
    rows = [
        (csv_row("2020-06-30T00:00:00", "-74.0", "40.6"), None),
        (csv_row("2020-06-30T00:01:00", "-74.0", "40.6", name='"SHIP, WITH COMMA"'), None),
        (csv_row("2020-06-30T00:02:00", "-74.0", "40.6", sog="102.3", cog="-49.6"), None),
        (csv_row("2020-06-30T00:03:00", "-74.0", "40.6")[: -len(",A,")], "parse_error"),  # too few fields
        (csv_row("2020-06-30T00:04:00", "-74.0", "forty"), "parse_error"),
        (csv_row("2020-06-30T00:05:00", "NaN", "40.6"), "nonfinite_coord"),
        (csv_row("2020-06-30T00:06:00", "-74.0", "91.0"), "coord_out_of_range"),
        (csv_row("2020-06-30T00:07:00", "181.0", "40.6"), "coord_out_of_range"),
        (csv_row("2020-06-30T00:08:00", "0.0", "0.0"), "null_island"),
        (csv_row("yesterday", "-74.0", "40.6"), "bad_time"),
        (csv_row("1989-12-31T23:59:59", "-74.0", "40.6"), "bad_time"),
        (csv_row("2020-06-30T00:09:00", "-74.0", "40.6", mmsi="SHIP"), "parse_error"),
        (csv_row("2020-06-30T00:10:00", "-74.0", "40.6", mmsi=""), "missing_value"),
        (csv_row("2020-06-30T00:11:00", "-74.0", "40.6", sog="fast"), "parse_error"),
    ]
    path = tmp_path / "ais.csv"
    path.write_text("\n".join([CSV_HEADER] + [r for r, _ in rows]) + "\n")
    result = read_file(path)
    check_accounting(result)
    expected = {i + 2: [reason] for i, (_, reason) in enumerate(rows) if reason}
    assert reasons_by_line(result) == expected
    assert result.rows_read == len(rows) and len(result.points) == 3
    sentinel = result.points.iloc[2]
    assert np.isnan(sentinel["sog"]) and np.isnan(sentinel["cog"])  # 102.3 kn and 360 deg: not available


def test_csv_non_utf8_line_is_quarantined(tmp_path):
    good = csv_row("2020-06-30T00:00:00", "-74.0", "40.6").encode()
    bad = csv_row("2020-06-30T00:01:00", "-74.0", "40.6", name="CAF\xc9").encode("latin-1")
    path = tmp_path / "latin.csv"
    path.write_bytes(CSV_HEADER.encode() + b"\n" + good + b"\n" + bad + b"\n")
    result = read_file(path)
    check_accounting(result)
    assert len(result.points) == 1 and reasons_by_line(result) == {3: ["parse_error"]}


def test_raw_text_is_truncated_to_500_chars(tmp_path):
    path = tmp_path / "long.csv"
    path.write_text(CSV_HEADER + "\n" + csv_row("2020-06-30T00:00:00", "-74.0", "x" * 2000) + "\n")
    result = read_file(path)
    assert len(result.quarantine["raw"].iloc[0]) == 500


# ---------------------------------------------------------------------------------------------
# Format detection


def test_format_detection_and_clear_errors(tmp_path):
    assert set(READERS) >= {"tracktable", "marinecadastre"}
    assert detect_format(embedded_files("small")[0]) == "tracktable"
    assert detect_format(embedded_files("csv")[0]) == "marinecadastre"
    other = tmp_path / "points.parquet"
    other.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match="points.parquet"):
        read_file(other)
    flights = tmp_path / "flights.csv"
    flights.write_text("# object_id timestamp latitude longitude\nA,2020-01-01 00:00:00,1,2\n")
    with pytest.raises(ValueError, match="flights.csv"):
        read_file(flights)
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "missing.traj")
    forced = read_file(embedded_files("small")[0], format="tracktable")
    assert forced.rows_read == 9091


def test_timestamps_are_never_float_seconds(tmp_path):
    path = tmp_path / "subsecond.traj"
    path.write_text(
        traj_record(
            [("1", "2020-12-08 00:00:00.123456", "-74.0", "40.6"), ("1", "2020-12-08 00:00:01", "-74.0", "40.6")]
        )
    )
    pts = read_file(path).points
    assert str(pts["t"].dtype) == "datetime64[ns, UTC]"
    assert pts["t"].iloc[0] == pd.Timestamp("2020-12-08 00:00:00.123456", tz="UTC")
    assert (pts["t"].iloc[1] - pts["t"].iloc[0]) == pd.Timedelta(microseconds=876544)
