"""The bad-input matrix: every kind of broken input gives a quarantine with a reason, or one clear
error naming the file and line; never a traceback from inside pandas, never a silent drop.

Every read asserts rows_read == kept + quarantined. Defects that are valid fixes at ingest
(duplicates, time going backwards, jumps, single fixes) pass ingest and are judged by the clean
step (``trajfm.data.clean.clean_partition``), which quarantines them with its own reasons.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trajfm.data.clean import clean_partition
from trajfm.data.ingest import ingest, load_points, read_ingest_summary
from trajfm.data.readers import SourceFormatError, read_file
from trajfm.data.schema import REASONS

PLT_HEADER = "Geolife trajectory\nWGS 84\nAltitude is in Feet\nReserved 3\n0,2,255,My Track,0,0,2,8421376\n0\n"
PORTO_HEADER = (
    '"TRIP_ID","CALL_TYPE","ORIGIN_CALL","ORIGIN_STAND","TAXI_ID","TIMESTAMP","DAY_TYPE","MISSING_DATA","POLYLINE"'
)
MC_HEADER = (
    "BaseDateTime,LON,LAT,MMSI,SOG,COG,Heading,VesselName,IMO,CallSign,VesselType,Status,"
    "Length,Width,Draft,Cargo,TranscieverClass,ETA"
)
GENERIC = {"traj_id": "id", "t": "t", "lon": "lon", "lat": "lat"}
UTC = "UTC"


def read(path, **kwargs):
    """Read and check the accounting and the reason codes."""
    r = read_file(path, **kwargs)
    assert r.rows_read == r.rows_kept + r.rows_quarantined
    assert set(r.quarantine["reason"]) <= set(REASONS)
    assert r.quarantine["reason"].notna().all() and r.quarantine["detail"].notna().all()
    return r


def reasons(r) -> dict[int, str]:
    return dict(zip(r.quarantine["line"].tolist(), r.quarantine["reason"].tolist()))


def tdrive(tmp_path, lines, name="1131.txt"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def td(t="2008-02-02 13:30:45", lon="116.51172", lat="39.92123", taxi="1131") -> str:
    return f"{taxi},{t},{lon},{lat}"


def plt(lat="39.9", lon="116.3", time="02:53:04") -> str:
    return f"{lat},{lon},0,492,39744.12,2008-10-23,{time}"


def porto(trip="T1", ts="1372636858", poly="[[-8.618643,41.141412],[-8.618499,41.141376]]") -> str:
    return f'"{trip}","C","","","20000589","{ts}","A","False","{poly}"'


def one_clear_error(excinfo, path, line):
    """The error is ours (not pandas'), names the file and the line."""
    assert excinfo.type is SourceFormatError
    message = str(excinfo.value)
    assert str(path) in message and (line is None or f"line {line}" in message)
    assert excinfo.value.file == str(path) and excinfo.value.line == line


# ---------------------------------------------------------------------------------------------
# Files that hold nothing


EMPTY_CASES = {
    "tracktable": ("e.traj", "", {}),
    "marinecadastre": ("e.csv", "", {}),
    "geolife": ("e.plt", "", {}),
    "tdrive": ("e.txt", "", {}),
    "porto": ("e.csv", "", {"format": "porto"}),
    "generic": ("e.csv", "", {"format": "generic", "columns": GENERIC, "kind": "bus"}),
    "blank lines": ("b.txt", "\n\n  \n", {"format": "tdrive"}),
}


@pytest.mark.parametrize("case", sorted(EMPTY_CASES))
def test_empty_file_reads_zero_rows(tmp_path, case):
    name, text, kwargs = EMPTY_CASES[case]
    path = tmp_path / name
    path.write_text(text)
    r = read(path, **kwargs)
    assert (r.rows_read, r.rows_kept, r.rows_quarantined) == (0, 0, 0)
    assert str(r.points["t"].dtype) == "datetime64[ns, UTC]"


def test_empty_parquet_table_reads_zero_rows_and_a_zero_byte_one_is_an_error(tmp_path):
    path = tmp_path / "e.parquet"
    pd.DataFrame({"id": pd.Series(dtype=str), "t": pd.Series(dtype=str), "lon": [], "lat": []}).to_parquet(path)
    assert read(path, format="generic", columns=GENERIC, kind="bus").rows_read == 0
    broken = tmp_path / "zero.parquet"
    broken.write_bytes(b"")
    with pytest.raises(SourceFormatError) as excinfo:
        read_file(broken, format="generic", columns=GENERIC, kind="bus")
    one_clear_error(excinfo, broken, None)


HEADER_ONLY = {
    "marinecadastre": ("h.csv", MC_HEADER + "\n", {}),
    "porto": ("h.csv", PORTO_HEADER + "\n", {}),
    "geolife": ("h.plt", PLT_HEADER, {}),
    "generic": ("h.csv", "id,t,lon,lat\r\n", {"format": "generic", "columns": GENERIC, "kind": "bus"}),
}


@pytest.mark.parametrize("case", sorted(HEADER_ONLY))
def test_header_only_reads_zero_rows(tmp_path, case):
    name, text, kwargs = HEADER_ONLY[case]
    path = tmp_path / name
    path.write_text(text)
    r = read(path, **kwargs)
    assert r.rows_read == 0 and r.points.empty


# ---------------------------------------------------------------------------------------------
# Files that are not quite the format


def test_wrong_delimiter(tmp_path):
    # A header-led CSV: one clear error at the header line, with the delimiter it seems to use.
    path = tmp_path / "semi.csv"
    path.write_text("id;t;lon;lat\na;2020-01-01T00:00:00Z;1.0;2.0\n")
    with pytest.raises(SourceFormatError, match="pass delimiter=';'") as excinfo:
        read_file(path, format="generic", columns=GENERIC, kind="bus")
    one_clear_error(excinfo, path, 1)
    mc = tmp_path / "mc.csv"
    mc.write_text(MC_HEADER.replace(",", ";") + "\n")
    with pytest.raises(SourceFormatError) as excinfo:
        read_file(mc, format="marinecadastre")
    one_clear_error(excinfo, mc, 1)
    # Headerless T-Drive: every line has the wrong field count and is quarantined as such.
    tsv = tdrive(tmp_path, [td().replace(",", "\t"), td(t="2008-02-02 13:31:45").replace(",", "\t")], "tab.txt")
    r = read(tsv, format="tdrive")
    assert r.rows_read == 2 and r.rows_kept == 0 and reasons(r) == {1: "parse_error", 2: "parse_error"}
    assert "1 fields" in r.quarantine["detail"].iloc[0]


def test_non_utf8_bytes_quarantine_only_their_line(tmp_path):
    cases = [
        (
            "1131.txt",
            [td().encode(), b"1131,2008-02-02 13:31:45,116.5\xff,39.9", td(t="2008-02-02 13:32:45").encode()],
            {},
            2,
        ),
        (
            "x.plt",
            [
                PLT_HEADER.encode() + plt().encode(),
                plt(time="02:53:09").encode() + b"\xe9",
                plt(time="02:53:14").encode(),
            ],
            {},
            8,
        ),
        (
            "g.csv",
            [b"id,t,lon,lat", b"caf\xe9,2020-01-01T00:00:00Z,1.0,2.0", b"a,2020-01-01T00:00:00Z,1.0,2.0"],
            {"format": "generic", "columns": GENERIC, "kind": "bus"},
            2,
        ),
        ("p.csv", [PORTO_HEADER.encode(), porto().encode(), porto(trip="TX2").encode().replace(b"X", b"\xff")], {}, 3),
    ]
    for name, lines, kwargs, bad_line in cases:
        path = tmp_path / name
        path.write_bytes(b"\n".join(lines) + b"\n")
        r = read(path, **kwargs)
        assert reasons(r) == {bad_line: "parse_error"}, name
        assert "non-UTF-8" in r.quarantine["detail"].iloc[0]
        assert "\ufffd" in r.quarantine["raw"].iloc[0]
        assert r.rows_kept == r.rows_read - 1


def test_truncated_last_line(tmp_path):
    path = tdrive(tmp_path, [td(), td(t="2008-02-02 13:31:45")[:-12]])  # cut inside the lon
    path.write_text(path.read_text().rstrip("\n"))  # and no final newline
    r = read(path)
    assert reasons(r) == {2: "parse_error"} and "3 fields" in r.quarantine["detail"].iloc[0]
    geo = tmp_path / "g.plt"
    geo.write_text(PLT_HEADER + plt() + "\n" + plt(time="02:53:09")[:-4])  # cut inside the time
    r = read(geo)
    assert reasons(r) == {8: "bad_time"} and r.rows_kept == 1
    trips = tmp_path / "t.csv"
    trips.write_text(PORTO_HEADER + "\n" + porto() + "\n" + porto(trip="T2")[:-9])  # cut inside POLYLINE
    r = read(trips)
    assert reasons(r) == {3: "parse_error"} and r.rows_kept == 2


def test_missing_columns(tmp_path):
    path = tmp_path / "fixes.csv"
    path.write_text("\n\nid,time,lon,lat\na,2020-01-01T00:00:00Z,1.0,2.0\n")  # header on line 3
    with pytest.raises(SourceFormatError, match=r"lacks column\(s\) \['t'\]") as excinfo:
        read_file(path, format="generic", columns=GENERIC, kind="bus")
    one_clear_error(excinfo, path, 3)
    trips = tmp_path / "trips.csv"
    trips.write_text('"TRIP_ID","TAXI_ID","POLYLINE"\n')
    with pytest.raises(SourceFormatError, match="TIMESTAMP") as excinfo:
        read_file(trips, format="porto")
    one_clear_error(excinfo, trips, 1)
    # Headerless formats: a line short of a field is a row with the wrong field count.
    r = read(tdrive(tmp_path, [td(), "1131,2008-02-02 13:31:45,116.5"]))
    assert reasons(r) == {2: "parse_error"}


def test_text_in_numeric_fields(tmp_path):
    r = read(tdrive(tmp_path, [td(lon="east"), td(t="2008-02-02 13:31:45", lat="4O.1"), td(t="2008-02-02 13:32:45")]))
    assert reasons(r) == {1: "parse_error", 2: "parse_error"} and r.rows_kept == 1
    geo = tmp_path / "g.plt"
    geo.write_text(PLT_HEADER + plt(lat="north") + "\n" + plt(time="02:53:09").replace(",492,", ",high,") + "\n")
    r = read(geo)
    assert reasons(r) == {7: "parse_error", 8: "parse_error"}
    assert r.quarantine["detail"].tolist() == ["lat is not a number", "altitude is not a number"]
    g = tmp_path / "g.csv"
    g.write_text("id,t,lon,lat,speed\na,2020-01-01T00:00:00Z,1.0,2.0,fast\na,2020-01-01T00:01:00Z,1.0,2.0,3\n")
    r = read(g, format="generic", columns={**GENERIC, "sog": "speed"}, kind="bus")
    assert reasons(r) == {2: "parse_error"} and r.quarantine["detail"].iloc[0] == "sog is not a number"


def test_nan_and_inf_coordinates(tmp_path):
    r = read(tdrive(tmp_path, [td(lon="nan"), td(lat="inf"), td(lon="-Infinity"), td(t="2008-02-02 13:31:45")]))
    assert reasons(r) == {1: "nonfinite_coord", 2: "nonfinite_coord", 3: "nonfinite_coord"}
    trips = tmp_path / "t.csv"
    trips.write_text(PORTO_HEADER + "\n" + porto(poly="[[NaN,41.1],[-8.6,Infinity],[-8.6,41.1]]") + "\n")
    r = read(trips)
    assert r.quarantine["reason"].tolist() == ["nonfinite_coord"] * 2 and r.rows_kept == 1
    table = pa.table(
        {"id": ["a"] * 3, "t": ["2020-01-01T00:00:00Z"] * 3, "lon": pa.array([np.nan, np.inf, 1.0]), "lat": [2.0] * 3}
    )
    pq.write_table(table, tmp_path / "p.parquet")
    r = read(tmp_path / "p.parquet", format="generic", columns=GENERIC, kind="bus")
    assert reasons(r) == {1: "nonfinite_coord", 2: "nonfinite_coord"}


def test_coordinates_out_of_range_and_null_island(tmp_path):
    r = read(
        tdrive(
            tmp_path,
            [
                td(lat="91"),
                td(lon="181"),
                td(lon="-180.5"),
                td(lat="-90"),
                td(lon="0", lat="0"),
                td(lon="0.0", lat="51.5"),
            ],
        )
    )
    assert reasons(r) == {1: "coord_out_of_range", 2: "coord_out_of_range", 3: "coord_out_of_range", 5: "null_island"}
    assert r.rows_kept == 2  # lat -90 and lon 0 alone are real places


def test_epoch_zero_and_year_2100(tmp_path):
    g = tmp_path / "g.csv"
    g.write_text("id,t,lon,lat\na,0,1.0,2.0\na,4102444800,1.0,2.0\na,1700000000,1.0,2.0\n")
    r = read(g, format="generic", columns=GENERIC, time_format="epoch_s", kind="bus")
    assert reasons(r) == {2: "bad_time", 3: "bad_time"} and r.rows_kept == 1
    assert r.quarantine["detail"].tolist() == [
        "timestamp before 1990-01-01",
        "timestamp more than 2 days 00:00:00 in the future",
    ]
    r = read(tdrive(tmp_path, [td(t="1970-01-01 08:00:00"), td(t="2100-01-01 00:00:00"), td()]))
    assert reasons(r) == {1: "bad_time", 2: "bad_time"}
    trips = tmp_path / "t.csv"
    trips.write_text("\n".join([PORTO_HEADER, porto(ts="0"), porto(trip="T2", ts="4102444800")]) + "\n")
    r = read(trips)
    assert r.quarantine["reason"].tolist() == ["bad_time"] * 4 and r.rows_kept == 0


def test_naive_and_aware_times_mixed(tmp_path):
    g = tmp_path / "mixed.csv"
    g.write_text(
        "id,t,lon,lat\n"
        "a,2026-07-01 12:00:00,1.0,2.0\n"  # naive
        "a,2026-07-01T12:00:00+01:00,1.0,2.0\n"  # with an offset
        "a,2026-07-01T11:00:00Z,1.0,2.0\n"  # UTC
        "a,2025-10-26 01:30:00,1.0,2.0\n"  # naive, happens twice in London (clocks go back)
        "a,2025-03-30 01:30:00,1.0,2.0\n"  # naive, never happens in London (clocks go forward)
    )
    # With a zone for naive times: every time lands on the right instant; DST gaps are not guessed.
    r = read(g, format="generic", columns=GENERIC, timezone="Europe/London", kind="bus")
    assert r.points["t"].tolist() == [pd.Timestamp("2026-07-01 11:00:00", tz=UTC)] * 3
    assert reasons(r) == {5: "bad_time", 6: "bad_time"} and "DST" in r.quarantine["detail"].iloc[0]
    # Without one, naive times are not assumed to be UTC: quarantined, and the detail says why.
    r = read(g, format="generic", columns=GENERIC, kind="bus")
    assert r.rows_kept == 2 and set(reasons(r)) == {2, 5, 6}
    assert set(r.quarantine["detail"]) == {"naive time (no UTC offset) and no timezone given; pass timezone="}


# ---------------------------------------------------------------------------------------------
# Valid fixes with defects: ingest keeps them, clean quarantines them


def ingest_and_clean(tmp_path, path, **params):
    out = ingest(path, root=tmp_path / "root", params=params or None)
    m = json.loads((out / "manifest.json").read_text())
    assert m["rows_read"] == m["rows_kept"] + m["rows_quarantined"]
    pts = load_points(out)
    cleaned, q, counts = clean_partition(pts)
    assert counts["rows_in"] == len(pts) == counts["rows_kept"] + counts["rows_quarantined"]
    return m, pts, q


def moving(n, start="2008-02-02 13:00:00", step_s=10, lon0=116.3, east_m_per_step=100.0):
    """n T-Drive lines of a taxi going east at east_m_per_step metres every step_s seconds."""
    t = pd.Timestamp(start) + pd.to_timedelta(np.arange(n) * step_s, unit="s")
    lon = lon0 + np.degrees(np.arange(n) * east_m_per_step / (6_371_008.8 * np.cos(np.radians(39.9))))
    return [td(t=str(a), lon=f"{x:.7f}", lat="39.9") for a, x in zip(t, lon)]


def test_duplicate_fixes_pass_ingest_and_are_quarantined_by_clean(tmp_path):
    lines = moving(40)
    lines.insert(10, lines[9])  # the same fix twice
    m, pts, q = ingest_and_clean(tmp_path, tdrive(tmp_path, lines))
    assert m["rows_read"] == m["rows_kept"] == 41
    assert q["reason"].tolist() == ["duplicate_fix"]


def test_time_going_backwards_is_counted_sorted_and_judged_by_clean(tmp_path):
    lines = moving(40)
    lines[20], lines[21] = lines[21], lines[20]  # one fix written before its predecessor
    m, pts, q = ingest_and_clean(tmp_path, tdrive(tmp_path, lines))
    assert m["rows_kept"] == 40 and m["time_reversals"] == 1
    assert m["per_file"]["1131.txt"]["time_reversals"] == 1
    assert pts["t"].is_monotonic_increasing  # ingest sorts each track by time
    assert q.empty  # in time order the track is plausible: nothing to reject


def test_a_1000_km_jump_in_10_s_is_a_speed_outlier(tmp_path):
    lines = moving(40)
    lines[20] = td(t=lines[20].split(",")[1], lon="128.0", lat="39.9")  # ~1,000 km east, 10 s later
    m, pts, q = ingest_and_clean(tmp_path, tdrive(tmp_path, lines))
    assert m["rows_kept"] == 40
    assert q["reason"].tolist() == ["speed_outlier"] and q["lon"].iloc[0] == 128.0


def test_single_point_trajectories_are_short(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tdrive(src, moving(40), "1.txt")
    tdrive(src, [td(taxi="2")], "2.txt")
    m, pts, q = ingest_and_clean(tmp_path, src)
    assert m["n_trajectories"] == 2
    assert q["reason"].tolist() == ["short_trajectory"] and q["traj_id"].iloc[0] == "tdrive:2"


def test_a_mover_with_a_million_points(tmp_path):
    n = 1_000_000
    t = (np.datetime64("2008-02-01T00:00:00") + np.arange(n).astype("timedelta64[s]")).astype(str)
    lon = (116.3 + np.arange(n) * 1e-6).round(6).astype(str)
    path = tmp_path / "1.txt"
    path.write_text("\n".join(f"1,{a[:10]} {a[11:]},{x},39.9" for a, x in zip(t.tolist(), lon.tolist())) + "\n")
    started = time.perf_counter()
    out = ingest(path, root=tmp_path / "root")
    elapsed = time.perf_counter() - started
    s = read_ingest_summary(out)
    assert (s.rows_read, s.rows_kept, s.rows_quarantined, s.n_trajectories) == (n, n, 0, 1)
    pts = pq.read_table(out / "points.parquet", columns=["t"]).column("t").to_numpy()
    assert (np.diff(pts.astype("datetime64[ns]").view(np.int64)) == 10**9).all()
    print(f"1M-point mover: ingest {elapsed:.1f} s ({n / elapsed:,.0f} points/s)")
