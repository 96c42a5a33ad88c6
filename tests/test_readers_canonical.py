"""Canonical Parquet (the data contract's columns) read by every entry point without a mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trajfm.data.readers import detect_format, read_file, resolve_sources


@pytest.fixture
def corpus_dir(shared_data) -> Path:
    d = shared_data / "corpus"
    if not d.is_dir():
        pytest.skip(f"{d} not found: the 16-source pre-training corpus is unavailable")
    return d


def test_every_corpus_file_is_detected_as_canonical(corpus_dir):
    files = sorted(corpus_dir.glob("*.parquet"))
    assert len(files) == 16
    assert {detect_format(f) for f in files} == {"canonical"}
    chosen, skipped = resolve_sources([str(corpus_dir)])
    assert sorted(Path(s.file.url).name for s in chosen) == [f.name for f in files]
    assert [Path(s["path"]).name for s in skipped] == ["SUMMARY.csv"]  # not a track file: skipped, said why


@pytest.mark.parametrize(
    "name, kinds",
    [
        ("riga_gtfsrt_transit.parquet", {"bus": 66883, "trolleybus": 40107, "tram": 17172}),
        ("movebank_vulture_bats.parquet", {"bird": 35256, "bat": 1740}),
    ],
)
def test_multi_kind_files_keep_each_rows_kind(corpus_dir, name, kinds):
    r = read_file(corpus_dir / name)
    assert r.format == "canonical"
    assert r.rows_read == sum(kinds.values()) == r.rows_kept + r.rows_quarantined
    assert r.points["kind"].value_counts().to_dict() == kinds
    raw = pd.read_parquet(corpus_dir / name)
    # traj_id is namespaced by the file; everything else is the file's own.
    assert (r.points["traj_id"].str.removeprefix(Path(name).stem + ":").to_numpy() == raw["traj_id"].to_numpy()).all()
    assert (r.points["t"].to_numpy() == raw["t"].to_numpy()).all()
    assert set(r.points["source"].astype(str)) == set(raw["source"])


def test_storms_before_1990_are_kept_gps_era_kinds_still_checked(corpus_dir, tmp_path):
    storms = read_file(corpus_dir / "hurdat2_storms.parquet")
    assert storms.rows_read == 78644 == storms.rows_kept  # 1851-2024 best track: none is a clock error
    assert storms.points["t"].min() < pd.Timestamp("1852-01-01", tz="UTC")
    # A bus fix in 1985 is still a clock error, in the same file as storms of 1900.
    df = pd.DataFrame(
        {
            "traj_id": ["s", "s", "b", "b"],
            "obj_id": ["s", "s", "b", "b"],
            "t": pd.to_datetime(
                ["1900-01-01 00:00", "1900-01-01 06:00", "1985-01-01 00:00", "2020-01-01 00:00"], utc=True
            ),
            "lon": [1.0, 2.0, 3.0, 4.0],
            "lat": [1.0, 1.0, 1.0, 1.0],
            "kind": ["storm", "storm", "bus", "bus"],
            "source": "x",
        }
    )
    df.to_parquet(tmp_path / "mixed.parquet", index=False)
    r = read_file(tmp_path / "mixed.parquet")
    assert r.rows_read == 4 and r.rows_kept == 3
    assert r.quarantine[["line", "reason", "detail"]].to_dict("records") == [
        {"line": 3, "reason": "bad_time", "detail": "timestamp before 1990-01-01"}
    ]
    assert "kind=bus" in r.quarantine["raw"].iloc[0]


def test_bad_rows_are_quarantined_with_reasons_and_accounted(tmp_path):
    n = 8
    df = pd.DataFrame(
        {
            "traj_id": ["a"] * n,
            "obj_id": ["m"] * n,
            "t": pd.date_range("2024-01-01", periods=n, freq="10s", tz="UTC").astype("datetime64[ns, UTC]"),
            "lon": [10.0, np.inf, 10.2, 0.0, 200.0, 10.5, 10.6, 10.7],
            "lat": [50.0, 50.1, 50.2, 0.0, 50.4, 50.5, 50.6, 50.7],
            "kind": ["tram"] * 6 + ["", "tram"],
            "source": "s",
            "sog": np.arange(n, dtype=float),
        }
    )
    df.loc[7, "traj_id"] = None
    df.to_parquet(tmp_path / "x.parquet", index=False)
    r = read_file(tmp_path / "x.parquet")
    assert r.rows_read == n == r.rows_kept + r.rows_quarantined
    assert dict(zip(r.quarantine["line"], r.quarantine["reason"])) == {
        2: "nonfinite_coord",
        4: "null_island",
        5: "coord_out_of_range",
        7: "missing_value",
        8: "missing_value",
    }
    assert list(r.points["sog"]) == [0.0, 2.0, 5.0]  # optional columns come along
    # kind= replaces every row's kind (an empty one included).
    forced = read_file(tmp_path / "x.parquet", kind="bus")
    assert set(forced.points["kind"].astype(str)) == {"bus"} and forced.rows_kept == 4


def test_non_canonical_parquet_is_not_guessed(tmp_path):
    pd.DataFrame({"lon": [1.0], "lat": [2.0], "time": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(
        ValueError, match=r"other.parquet: Parquet without the canonical columns \(lacks \['traj_id'.*format='generic'"
    ):
        detect_format(tmp_path / "other.parquet")
    # A folder scan skips it with the reason, and still reads the canonical neighbour.
    pd.DataFrame(
        {
            "traj_id": ["a"],
            "obj_id": ["a"],
            "t": pd.to_datetime(["2024-01-01"], utc=True),
            "lon": [1.0],
            "lat": [2.0],
            "kind": ["bus"],
            "source": ["s"],
        }
    ).to_parquet(tmp_path / "good.parquet")
    chosen, skipped = resolve_sources([str(tmp_path)])
    assert [Path(s.file.url).name for s in chosen] == ["good.parquet"] and chosen[0].format == "canonical"
    assert len(skipped) == 1 and "other.parquet" in skipped[0]["path"]


def test_ingest_and_evaluate_data_path_read_canonical_parquet_as_is(corpus_dir, tmp_path):
    """``trajfm run ingest --sources '["x.parquet"]'`` and ``trajfm evaluate --data x.parquet`` both
    end in the ingest stage with the format detected; the rows add up and kinds are per row."""
    from trajfm.data.ingest import ingest, load_points
    from trajfm.evaluate.suite import ingest_and_clean
    from trajfm.store import read_manifest

    src = corpus_dir / "riga_gtfsrt_transit.parquet"
    out = ingest([str(src)], root=tmp_path)
    m = read_manifest(out)
    assert m["rows_read"] == 124162 == m["rows_kept"] + m["rows_quarantined"]
    assert load_points(out)["kind"].value_counts().to_dict() == {"bus": 66883, "trolleybus": 40107, "tram": 17172}
    _, stage = ingest_and_clean([str(src)], root=tmp_path, preprocess_params=None)
    pm = read_manifest(stage)
    assert pm["rows_in"] == 124162 == pm["rows_kept"] + pm["rows_quarantined"]
    assert pm["native_interval_s"] == {"riga_gtfs_rt": 10.0}


def test_trajfm_evaluate_data_canonical_parquet_without_format(corpus_dir, tmp_path, capsys):
    """``trajfm evaluate --model M --data x.parquet``: no --format, no mapping, kinds per row."""
    import json

    from test_evaluate_cli import train_tiny

    from trajfm.cli import main as trajfm_main

    train_dir = train_tiny(tmp_path, steps=4)
    out = tmp_path / "r.json"
    rc = trajfm_main(
        [
            "evaluate",
            "--model",
            str(train_dir / "model.pt"),
            "--data",
            str(corpus_dir / "riga_gtfsrt_transit.parquet"),
            "--tasks",
            "forecast",
            "--data-root",
            str(tmp_path),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["metrics"]["forecast.ade_m@1.model"] > 0
    ing, pre = res["accounting"]["ingest"], res["accounting"]["preprocess"]
    assert ing["rows_read"] == 124162 == ing["rows_kept"] + ing["rows_quarantined"]
    assert pre["rows_in"] == 124162 == pre["rows_kept"] + pre["rows_quarantined"]
