"""Readers for GeoLife, Porto, T-Drive and generic CSV/Parquet; streaming, directories, globs, URLs.

Real files (GeoLife, Liverpool bus) come from ../shared/data through the ``shared_data`` fixture;
Porto and T-Drive files are written here in their exact published formats. Every read checks the
accounting: rows_read == kept + quarantined.
"""

from __future__ import annotations

import gzip
import json
import tracemalloc

import fsspec
import numpy as np
import pandas as pd
import pytest

from trajfm.data.ingest import ingest, load_points, read_ingest_summary
from trajfm.data.readers import READERS, SourceFormatError, detect_format, iter_file, iter_sources, read_file
from trajfm.data.schema import POINT_COLUMNS, REASONS

UTC = "UTC"
PLT_HEADER = "Geolife trajectory\nWGS 84\nAltitude is in Feet\nReserved 3\n0,2,255,My Track,0,0,2,8421376\n0\n"
PORTO_HEADER = (
    '"TRIP_ID","CALL_TYPE","ORIGIN_CALL","ORIGIN_STAND","TAXI_ID","TIMESTAMP","DAY_TYPE","MISSING_DATA","POLYLINE"'
)
LIVERPOOL_COLUMNS = {
    "traj_id": "trip_id",
    "obj_id": "vehicle_id",
    "t": "timestamp",
    "lon": "longitude",
    "lat": "latitude",
}


def check(result):
    assert result.rows_read == len(result.points) + len(result.quarantine)
    assert set(result.quarantine["reason"]) <= set(REASONS)
    assert list(result.points.columns[: len(POINT_COLUMNS)]) == POINT_COLUMNS
    assert str(result.points["t"].dtype) == "datetime64[ns, UTC]"
    return result


def plt_line(lat, lon, alt_ft="492", date="2008-10-23", time="02:53:04") -> str:
    return f"{lat},{lon},0,{alt_ft},39744.1201851852,{date},{time}"


def porto_line(trip="1372636858620000589", taxi="20000589", ts="1372636858", missing="False", polyline=None) -> str:
    poly = polyline if polyline is not None else "[[-8.618643,41.141412],[-8.618499,41.141376],[-8.620326,41.14251]]"
    return f'"{trip}","C","","","{taxi}","{ts}","A","{missing}","{poly}"'


# ---------------------------------------------------------------------------------------------
# GeoLife


def test_geolife_real_tree_every_point_read_lat_first(tmp_path, shared_data):
    out = ingest(shared_data / "geolife", root=tmp_path / "root")
    s = read_ingest_summary(out)
    # 111 files, 164,531 fixes (165,197 lines minus 6 header lines each); none rejected.
    assert (s.rows_read, s.rows_kept, s.rows_quarantined) == (164_531, 164_531, 0)
    assert len(s.per_file) == 111 and s.n_trajectories == 111 and s.n_objects == 11
    assert {f["format"] for f in s.per_file.values()} == {"geolife"}
    # The mode labels of user 010 are not a trajectory file: skipped, and said so.
    assert [p["path"].endswith("010/labels.txt") for p in s.skipped_sources] == [True]
    pts = load_points(out)
    assert set(pts["kind"]) == {"person"} and set(pts["source"]) == {"geolife"}
    # Beijing: the file writes lat first; canonical lon is ~116, lat ~40.
    assert pts["lon"].median() == pytest.approx(116.3, abs=0.5) and pts["lat"].median() == pytest.approx(40.0, abs=0.5)
    first = pts[pts["traj_id"] == "geolife:000:20081023025304"].iloc[0]
    # 39.984702,116.318417,0,492,39744.1201851852,2008-10-23,02:53:04
    assert (first["obj_id"], first["lon"], first["lat"]) == ("000", 116.318417, 39.984702)
    assert first["t"] == pd.Timestamp("2008-10-23 02:53:04", tz=UTC)
    assert first["alt"] == pytest.approx(492 * 0.3048)


def test_geolife_written_file_altitude_user_and_bad_lines(tmp_path):
    user = tmp_path / "Data" / "042" / "Trajectory"
    user.mkdir(parents=True)
    path = user / "20090101000000.plt"
    lines = [
        plt_line("39.9", "116.3", "-777"),  # line 7: no altitude
        plt_line("39.9", "116.3", "100", time="00:00:05"),
        plt_line("39.9", "116.3", "100", time="00:00:10")[: -len(",2008-10-23,00:00:10")],  # 5 fields
        plt_line("39.9", "116.3", "high", time="00:00:15"),  # text in the altitude
        plt_line("91", "116.3", "100", time="00:00:20"),  # lat 91 (lat is the first field)
    ]
    path.write_text(PLT_HEADER + "\r\n".join(lines) + "\r\n")
    r = check(read_file(path))
    assert r.format == "geolife" and r.rows_read == 5 and len(r.points) == 2
    assert r.quarantine.set_index("line")["reason"].to_dict() == {
        9: "parse_error",
        10: "parse_error",
        11: "coord_out_of_range",
    }
    assert set(r.points["obj_id"]) == {"042"} and set(r.points["traj_id"]) == {"geolife:042:20090101000000"}
    assert np.isnan(r.points["alt"].iloc[0]) and r.points["alt"].iloc[1] == pytest.approx(30.48)
    assert r.points["t"].iloc[1] == pd.Timestamp("2008-10-23 00:00:05", tz=UTC)


def test_geolife_without_header_is_one_clear_error(tmp_path):
    path = tmp_path / "000" / "Trajectory" / "x.plt"
    path.parent.mkdir(parents=True)
    path.write_text(plt_line("39.9", "116.3") + "\n")
    with pytest.raises(SourceFormatError, match=r"x\.plt, line 1: not a GeoLife"):
        read_file(path)


# ---------------------------------------------------------------------------------------------
# Porto


def test_porto_trips_become_fixes_every_15_s(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(
        "\n".join(
            [
                PORTO_HEADER,
                porto_line(),
                porto_line(
                    trip="1372637303620000596",
                    taxi="20000596",
                    ts="1372637303",
                    polyline="[[-8.639847,41.159826],[-8.640351,41.159871]]",
                ),
            ]
        )
        + "\n"
    )
    assert detect_format(path) == "porto"
    r = check(read_file(path))
    assert r.rows_read == 5 and len(r.points) == 5 and r.quarantine.empty
    pts = r.points
    first = pts.iloc[0]
    assert (first["traj_id"], first["obj_id"]) == ("porto:1372636858620000589", "20000589")
    assert (first["lon"], first["lat"]) == (-8.618643, 41.141412)  # POLYLINE is [lon, lat]
    trip = pts[pts["obj_id"] == "20000589"]
    assert trip["t"].tolist() == [pd.Timestamp(1372636858 + 15 * i, unit="s", tz=UTC) for i in range(3)]
    assert set(pts["kind"]) == {"vehicle"} and set(pts["source"]) == {"porto"}


def test_porto_missing_data_and_broken_trips_are_quarantined(tmp_path):
    path = tmp_path / "porto.csv"
    rows = [
        porto_line(trip="T1"),  # line 2: 3 good points
        porto_line(trip="T2", missing="True"),  # 3 points: the source says points are missing
        porto_line(trip="T3", polyline="[]"),  # no fixes: one row
        porto_line(trip="T4", polyline="[[-8.6,41.1],[-8.6,true],[NaN,41.1],[-8.6]]"),
        porto_line(trip="T5", ts="0"),  # epoch 0
        porto_line(trip="T6", ts="soon"),
        porto_line(trip="", taxi="20000589"),  # empty trip id
        porto_line(trip="T8")[:-20],  # truncated last line: JSON cut, quote unclosed
    ]
    path.write_text(PORTO_HEADER + "\n" + "\n".join(rows))
    r = check(read_file(path))
    q = r.quarantine
    assert r.rows_read == 3 + 3 + 1 + 4 + 3 + 3 + 3 + 1
    assert len(r.points) == 3 + 1
    by_line = q.groupby("line")["reason"].apply(list).to_dict()
    assert by_line == {
        3: ["source_flagged"] * 3,
        4: ["missing_value"],
        5: ["parse_error", "nonfinite_coord", "parse_error"],
        6: ["bad_time"] * 3,
        7: ["bad_time"] * 3,
        8: ["missing_value"] * 3,
        9: ["parse_error"],
    }
    assert q.loc[q["line"] == 5, "raw"].iloc[0].endswith("POLYLINE[1]=[-8.6, true]")
    assert "MISSING_DATA=True" in q.loc[q["line"] == 3, "detail"].iloc[0]


def test_porto_header_without_polyline_is_one_clear_error(tmp_path):
    path = tmp_path / "porto.csv"
    path.write_text('"TRIP_ID","TAXI_ID","TIMESTAMP"\n"1","2","1372636858"\n')
    with pytest.raises(SourceFormatError, match=r"porto\.csv, line 1: not a Porto taxi CSV.*POLYLINE"):
        read_file(path, format="porto")


# ---------------------------------------------------------------------------------------------
# T-Drive


def test_tdrive_beijing_time_to_utc_and_lon_first(tmp_path):
    path = tmp_path / "1131.txt"
    path.write_text("1131,2008-02-02 13:30:45,116.51172,39.92123\n1131,2008-02-02 13:35:45,116.51135,39.93883\n")
    assert detect_format(path) == "tdrive"
    r = check(read_file(path))
    first = r.points.iloc[0]
    assert (first["traj_id"], first["obj_id"], first["lon"], first["lat"]) == (
        "tdrive:1131",
        "1131",
        116.51172,
        39.92123,
    )
    assert first["t"] == pd.Timestamp("2008-02-02 05:30:45", tz=UTC)  # Beijing is UTC+8
    assert set(r.points["kind"]) == {"vehicle"} and set(r.points["source"]) == {"tdrive"}
    utc = read_file(path, timezone="UTC").points
    assert utc["t"].iloc[0] == pd.Timestamp("2008-02-02 13:30:45", tz=UTC)


# ---------------------------------------------------------------------------------------------
# Generic CSV / Parquet


def test_generic_liverpool_bus_local_uk_time(tmp_path, shared_data):
    src = shared_data / "liverpool_bus" / "route14_outbound.csv"
    params = {"format": "generic", "columns": LIVERPOOL_COLUMNS, "timezone": "Europe/London", "kind": "bus"}
    out = ingest(src, root=tmp_path / "root", params=params)
    s = read_ingest_summary(out)
    assert (s.rows_read, s.rows_kept, s.rows_quarantined) == (1533, 1533, 0)
    assert s.n_trajectories == 16 and s.n_objects == 8
    pts = load_points(out)
    # 23811684,"4716","1091","2026-01-26 15:57:02",53.44451,-2.925173,...: January, so UK time = UTC
    first = pts[pts["traj_id"] == "route14_outbound:1091"].iloc[0]
    assert (first["obj_id"], first["lon"], first["lat"]) == ("4716", -2.925173, 53.44451)
    assert first["t"] == pd.Timestamp("2026-01-26 15:57:02", tz=UTC)
    assert set(pts["kind"]) == {"bus"} and set(pts["source"]) == {"route14_outbound"}
    # The parameters are part of the cache key: another zone is another output.
    summer = ingest(src, root=tmp_path / "root", params={**params, "timezone": "Asia/Tokyo"})
    assert summer != out
    assert load_points(summer)["t"].min() == pts["t"].min() - pd.Timedelta(hours=9)


def test_generic_time_forms_kind_and_source_columns(tmp_path):
    path = tmp_path / "fixes.csv"
    path.write_text(
        "id;when;x;y;who;what;speed\n"
        "a;1700000000;10.5;50.1;m1;bird;3.5\n"
        "a;1700000060;10.6;50.2;m1;;\n"
        "b;1700000000;-70.0;-30.0;m2;aircraft;250\n"
    )
    cols = {"traj_id": "id", "t": "when", "lon": "x", "lat": "y", "obj_id": "who", "kind": "what", "sog": "speed"}
    r = check(read_file(path, format="generic", columns=cols, time_format="epoch_s", delimiter=";", kind="bird"))
    assert r.quarantine.empty
    assert r.points["t"].tolist() == [pd.Timestamp(v, unit="s", tz=UTC) for v in (1700000000, 1700000060, 1700000000)]
    assert r.points["kind"].tolist() == ["bird", "bird", "aircraft"]  # empty kind -> the kind option
    assert r.points["obj_id"].tolist() == ["m1", "m1", "m2"] and r.points["traj_id"].iloc[0] == "fixes:a"
    assert r.points["sog"].iloc[0] == 3.5 and np.isnan(r.points["sog"].iloc[1])

    dated = tmp_path / "dated.csv"
    dated.write_text(
        "trip,d,clock,lon,lat,src\n1,23/10/2008,02:53:04,116.3,39.9,survey\n1,23/10/2008,02:53:09,116.3,39.9,\n"
    )
    cols = {"obj_id": "trip", "date": "d", "time": "clock", "lon": "lon", "lat": "lat", "source": "src"}
    r = check(
        read_file(
            dated,
            format="generic",
            columns=cols,
            time_format="%d/%m/%Y %H:%M:%S",
            timezone="Asia/Shanghai",
            kind="person",
        )
    )
    assert r.points["t"].iloc[0] == pd.Timestamp("2008-10-22 18:53:04", tz=UTC)
    assert r.points["source"].tolist() == ["survey", "dated"]  # empty source -> the file stem
    assert r.quarantine.empty
    ms = tmp_path / "ms.csv"
    ms.write_text("id,t,lon,lat\nz,1700000000123,1.5,2.5\n")
    r = check(
        read_file(
            ms,
            format="generic",
            columns={"traj_id": "id", "t": "t", "lon": "lon", "lat": "lat"},
            time_format="epoch_ms",
            kind="bird",
        )
    )
    assert r.points["t"].iloc[0] == pd.Timestamp(1700000000123, unit="ms", tz=UTC)


def test_generic_parquet_typed_columns(tmp_path):
    path = tmp_path / "fixes.parquet"
    pd.DataFrame(
        {
            "trip": [1091.0, 1091.0, 7.0],  # integer ids stored as float
            "ts": pd.to_datetime(["2026-07-01 12:00:00", "2026-07-01 12:00:30", "2026-07-01 12:01:00"]),
            "lon": [-2.9, -2.91, np.inf],
            "lat": [53.4, 53.41, 53.42],
            "alt": [10.0, None, 12.0],
        }
    ).to_parquet(path, index=False, row_group_size=2)
    cols = {"traj_id": "trip", "t": "ts", "lon": "lon", "lat": "lat", "alt": "alt"}
    r = check(read_file(path, format="generic", columns=cols, timezone="Europe/London", kind="bus", chunk_rows=2))
    assert r.points["traj_id"].tolist() == ["fixes:1091", "fixes:1091"]
    assert r.points["t"].iloc[0] == pd.Timestamp("2026-07-01 11:00:00", tz=UTC)  # BST = UTC+1
    assert r.quarantine[["line", "reason"]].values.tolist() == [[3, "nonfinite_coord"]]
    assert "lon=inf" in r.quarantine["raw"].iloc[0]
    with pytest.raises(SourceFormatError, match="fixes.parquet.*lacks column"):
        read_file(path, format="generic", columns={**cols, "lon": "longitude"}, kind="bus")


def test_generic_needs_a_valid_mapping(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("id,t,lon,lat\n")
    with pytest.raises(ValueError, match="needs columns="):
        read_file(path, format="generic", kind="bus")
    with pytest.raises(ValueError, match="lacks"):
        read_file(path, format="generic", kind="bus", columns={"traj_id": "id", "lon": "lon", "lat": "lat"})
    with pytest.raises(ValueError, match="needs kind="):
        read_file(path, format="generic", columns={"traj_id": "id", "t": "t", "lon": "lon", "lat": "lat"})
    with pytest.raises(ValueError, match="does not take option"):
        read_file(path, format="tdrive", columns={"traj_id": "id"})
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        read_file(
            path,
            format="generic",
            columns={"traj_id": "id", "t": "t", "lon": "lon", "lat": "lat"},
            kind="bus",
            timezone="Mars/Olympus",
        )
    # Ingest checks its parameters before reading anything.
    with pytest.raises(ValueError, match="needs columns="):
        ingest(path, root=tmp_path / "root", params={"format": "generic", "kind": "bus"})
    ais = tmp_path / "ais.csv"
    ais.write_text("BaseDateTime,LON,LAT,MMSI\n")
    with pytest.raises(ValueError, match=r"ais\.csv: format 'marinecadastre' does not take option\(s\) \['timezone'\]"):
        ingest(ais, root=tmp_path / "root", params={"timezone": "UTC"})


# ---------------------------------------------------------------------------------------------
# Streaming, directories, globs, URLs


def write_tdrive(path, n, taxi="1131", start="2008-02-02 00:00:00", step_s=5, seed=0):
    """A T-Drive file of ``n`` fixes, one every ``step_s`` seconds, a random walk around Beijing."""
    rng = np.random.default_rng(seed)
    t = (np.datetime64(start) + (np.arange(n) * step_s).astype("timedelta64[s]")).astype(str)
    lon = 116.3 + np.cumsum(rng.normal(0, 1e-4, n))
    lat = 39.9 + np.cumsum(rng.normal(0, 1e-4, n))
    body = "\n".join(
        f"{taxi},{a[:10]} {a[11:]},{x:.6f},{y:.6f}" for a, x, y in zip(t.tolist(), lon.tolist(), lat.tolist())
    )
    path.write_text(body + "\n")
    return path


def test_chunks_are_bounded_and_add_up_to_the_whole_file(tmp_path):
    path = write_tdrive(tmp_path / "7.txt", 2_500)
    chunks = list(iter_file(path, chunk_rows=1_000))
    assert [c.rows_read for c in chunks] == [1_000, 1_000, 500]
    whole = read_file(path)
    pd.testing.assert_frame_equal(pd.concat([c.points for c in chunks], ignore_index=True), whole.points)
    # A byte cap cuts chunks too.
    assert max(c.rows_read for c in iter_file(path, chunk_bytes=4_096)) < 100


def test_file_several_times_larger_than_the_memory_cap_reads_in_bounded_memory(tmp_path):
    """~7 MB of T-Drive text streamed in 1,000-line chunks (the cap: about 1 kB of memory a row,
    ~1 MB): the peak traced memory (Python objects and numpy arrays) stays under a fifth of the
    file, and no chunk holds more than its 1,000 rows."""
    path = write_tdrive(tmp_path / "big.txt", 160_000)
    size = path.stat().st_size
    next(iter_file(write_tdrive(tmp_path / "warm.txt", 10), chunk_rows=1_000))  # imports, caches
    rows = kept = 0
    tracemalloc.start()
    try:
        for chunk in iter_file(path, chunk_rows=1_000):
            assert chunk.rows_read <= 1_000
            rows += chunk.rows_read
            kept += chunk.rows_kept
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == kept == 160_000
    assert peak < size / 5, f"peak {peak / 1e6:.2f} MB for a {size / 1e6:.1f} MB file"
    print(f"streamed {size / 1e6:.1f} MB with a peak of {peak / 1e6:.2f} MB traced")


def test_ingest_spills_sorted_runs_and_gets_the_same_output(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i, taxi in enumerate(("1", "2", "3")):
        write_tdrive(src / f"{taxi}.txt", 3_000, taxi=taxi, seed=i)
    (src / "2.txt").write_text((src / "2.txt").read_text() + "2,2008-02-01 23:00:00,116.4,39.9\n")  # back in time
    small = ingest(src, root=tmp_path / "a", params={"memory_rows": 1_000, "chunk_rows": 700})
    roomy = ingest(src, root=tmp_path / "b")
    ms, mr = (json.loads((d / "manifest.json").read_text()) for d in (small, roomy))
    assert ms["performance"]["spilled_runs"] >= 5 and mr["performance"]["spilled_runs"] == 0
    assert ms["key"] == mr["key"]  # memory knobs are not part of the key
    assert ms["files"] == mr["files"]  # same rows, same content hash
    pd.testing.assert_frame_equal(load_points(small), load_points(roomy))
    assert ms["rows_read"] == 9_001 and ms["time_reversals"] == 1


def test_directories_globs_fsspec_urls_and_compressed_files(tmp_path):
    src = tmp_path / "taxis"
    (src / "part1").mkdir(parents=True)
    write_tdrive(src / "part1" / "1.txt", 50, taxi="1")
    write_tdrive(src / "2.txt", 30, taxi="2")
    with gzip.open(src / "3.txt.gz", "wt") as f:
        f.write("3,2008-02-02 13:30:45,116.51172,39.92123\n")
    (src / "notes.md").write_text("not data")

    by_dir = read_ingest_summary(ingest(src, root=tmp_path / "r"))
    assert by_dir.rows_read == 81 and sorted(by_dir.per_file) == ["1.txt", "2.txt", "3.txt.gz"]
    by_glob = read_ingest_summary(ingest(str(src / "**" / "*.txt"), root=tmp_path / "r"))
    assert by_glob.rows_read == 80
    by_url = read_ingest_summary(ingest(f"file://{src}/2.txt", root=tmp_path / "r"))
    assert by_url.rows_read == 30
    chunks = list(iter_sources([src / "part1", str(src / "*.txt*")], chunk_rows=20))
    assert [c.rows_read for c in chunks] == [20, 10, 1, 20, 20, 10]  # sorted: 2.txt, 3.txt.gz, part1/1.txt

    fs = fsspec.filesystem("memory")
    fs.pipe(
        "/trajfm-test/taxis/9.txt", b"9,2008-02-02 13:30:45,116.51172,39.92123\n9,2008-02-02 13:31:45,116.51,39.92\n"
    )
    fs.pipe("/trajfm-test/taxis/8.txt", b"8,2008-02-02 13:30:45,116.51172,39.92123\n")
    try:
        out = ingest("memory://trajfm-test/taxis", root=tmp_path / "r")
        s = read_ingest_summary(out)
        assert s.rows_read == 3 and s.n_objects == 2
        assert all(p["path"].startswith("memory://") for p in s.sources)
        one = read_file("memory://trajfm-test/taxis/9.txt")
        assert one.rows_kept == 2 and str(one.path) == "memory://trajfm-test/taxis/9.txt"
    finally:
        fs.rm("/trajfm-test", recursive=True)
    with pytest.raises(FileNotFoundError):
        ingest(str(src / "*.nothing"), root=tmp_path / "r")


def test_registry_lists_every_format():
    assert set(READERS) >= {"tracktable", "marinecadastre", "geolife", "porto", "tdrive", "generic"}
    assert READERS["geolife"].kind == "person" and READERS["porto"].kind == "vehicle"
