"""Feature shards on real corpus sources: the windows of the in-memory path, every point
accounted for, bounded shard sizes, hashes that catch a replaced file, train-only statistics
merged chunk by chunk."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from trajfm.features.shards import ShardParams, load_manifest, load_shard, load_split, make_shards, write_shards
from trajfm.features.windows import WindowParams, build_windows, normalization_stats

SOURCES = ("hurdat2_storms", "riga_gtfsrt_transit", "dma_ais_kattegat_3ships")  # storms, buses/trams, ships


@pytest.fixture(scope="module")
def corpus_sources():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: the real corpus sources are unavailable")
    shared = SHARED_DATA
    return [(name, str(shared / "corpus" / f"{name}.parquet")) for name in SOURCES]


PARAMS = ShardParams(WindowParams(window=32, stride=32, min_points=8, split_by="source"), max_windows=700)


@pytest.fixture(scope="module")
def written(corpus_sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return out, write_shards(corpus_sources, out, PARAMS, chunk_rows=7_000)  # chunk boundaries cut trajectories


def test_shards_hold_the_windows_of_the_in_memory_path(corpus_sources, written):
    out, manifest = written
    for name, path in corpus_sources:
        points = pd.read_parquet(path)
        sets, counts = build_windows(points, PARAMS.windows)
        for split in ("train", "val", "test"):
            parts = [load_shard(out, sh) for sh in manifest["shards"] if sh["source"] == name and sh["split"] == split]
            assert sum(len(p) for p in parts) == len(sets[split]) == manifest["sources"][name]["windows"][split]
            if not parts:
                continue
            x = np.concatenate([p.x for p in parts])
            np.testing.assert_array_equal(x, sets[split].x)
            np.testing.assert_array_equal(np.concatenate([p.mask for p in parts]), sets[split].mask)
            np.testing.assert_array_equal(np.concatenate([p.t_ns for p in parts]), sets[split].t_ns)
            np.testing.assert_array_equal(np.concatenate([p.traj_id for p in parts]), sets[split].traj_id)
        short = sum(c["points_too_short"] for c in counts.values())
        assert manifest["sources"][name]["points_too_short"] == short


def test_every_point_is_accounted_for_and_shards_are_bounded(corpus_sources, written):
    out, manifest = written
    for name, path in corpus_sources:
        src = manifest["sources"][name]
        assert src["points_in"] == len(pd.read_parquet(path, columns=["t"]))
        assert src["points_in"] == src["view_points"] == src["points_in_shards"] + src["points_too_short"]
        assert sum(sh["points"] for sh in manifest["shards"] if sh["source"] == name) == src["points_in_shards"]
        assert "min_points" in src["quarantine_reason"]
    assert manifest["points_in"] == manifest["points_in_shards"] + manifest["points_too_short"]
    assert all(1 <= sh["windows"] <= PARAMS.max_windows for sh in manifest["shards"])
    assert sum(sh["windows"] > 600 for sh in manifest["shards"]) >= 2  # several full shards: the bound was hit
    assert json.loads((out / "shards.json").read_text()) == manifest


def test_statistics_come_from_the_train_split_only(written):
    out, _ = written
    stats = json.loads((out / "stats.json").read_text())
    expected = normalization_stats(load_split(out, "train"))
    assert stats["n_points"] == expected["n_points"]
    np.testing.assert_allclose(stats["mean"], expected["mean"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["std"], expected["std"], rtol=1e-9)
    with_val = normalization_stats(load_split(out, "val"))
    assert not np.allclose(with_val["mean"][:3], stats["mean"][:3])  # the test can tell the splits apart


def test_chunk_size_changes_nothing(corpus_sources, written, tmp_path):
    _, manifest = written
    again = write_shards(corpus_sources[:2], tmp_path, PARAMS, chunk_rows=1_000_000)
    assert [sh["sha256"] for sh in again["shards"]] == [
        sh["sha256"] for sh in manifest["shards"] if sh["source"] in SOURCES[:2]
    ]


def test_a_replaced_shard_is_caught_by_its_hash(written, tmp_path):
    out, manifest = written
    sh = manifest["shards"][0]
    load_shard(out, sh, verify=True)
    bad = dict(sh, sha256="0" * 64)
    with pytest.raises(ValueError, match="does not match its manifest hash"):
        load_shard(out, bad, verify=True)


def test_the_stage_is_written_once(corpus_sources, tmp_path):
    first = make_shards(corpus_sources[2:], tmp_path, PARAMS)
    assert make_shards(corpus_sources[2:], tmp_path, PARAMS) == first
    assert (first / "manifest.json").is_file() and load_manifest(first)["windows"]["train"] > 0
    with pytest.raises(ValueError, match="split_by must be 'source'"):
        ShardParams(WindowParams(split_by="global"))


def test_coarser_views_are_sharded_and_accounted(corpus_sources, tmp_path):
    params = ShardParams(PARAMS.windows, max_windows=700, coarsen=(1, 2, 4))
    name, path = corpus_sources[1]  # Riga transit, 10 s: views at 20 s and 40 s
    manifest = write_shards([(name, path)], tmp_path, params, chunk_rows=7_000)
    src = manifest["sources"][name]
    n = len(pd.read_parquet(path, columns=["t"]))
    assert src["points_in"] == n and src["view_points"] == src["points_in_shards"] + src["points_too_short"]
    views = src["views"]
    assert set(views) == {"1", "2", "4"} and all(v["rows_in"] == n for v in views.values())
    assert all(v["rows_in"] == v["rows_kept"] + v["rows_skipped"] + v["rows_in_short_views"] for v in views.values())
    assert src["view_points"] == sum(v["rows_kept"] for v in views.values())
    train = load_split(tmp_path, "train")
    ids = train.traj_id.astype(str)

    def median_step_s(rows):
        t, mask = train.t_ns[rows], train.mask[rows]
        steps = np.diff(t, axis=1)[mask[:, 1:]]
        return float(np.median(steps)) / 1e9

    native = median_step_s(np.char.find(ids, "@x") < 0)
    dt = {m: median_step_s(np.char.endswith(ids, f"@x{m}")) for m in (2, 4)}
    assert dt[2] == pytest.approx(2 * native, rel=0.2) and dt[4] == pytest.approx(4 * native, rel=0.2)


def test_a_partitioned_dataset_gives_the_shards_of_the_file(corpus_sources, written, tmp_path):
    """The preprocess stage writes ``points.parquet`` as a directory of partitions."""
    _, manifest = written
    name, path = corpus_sources[0]
    points = pd.read_parquet(path, columns=["traj_id", "t", "lon", "lat"])
    ids = points["traj_id"].unique()
    folder = tmp_path / "points.parquet"
    folder.mkdir()
    for i, part in enumerate(np.array_split(ids, 3)):  # whole trajectories per partition, rows shuffled inside
        points[points["traj_id"].isin(part)].sample(frac=1.0, random_state=i).to_parquet(
            folder / f"part.{i}.parquet", index=False
        )
    again = write_shards([(name, str(folder))], tmp_path / "out", PARAMS, chunk_rows=7_000)
    assert again["sources"][name]["windows"] == manifest["sources"][name]["windows"]
    ours = np.concatenate([load_shard(tmp_path / "out", sh).x for sh in again["shards"] if sh["split"] == "train"])
    theirs = np.concatenate(
        [load_shard(written[0], sh).x for sh in manifest["shards"] if sh["source"] == name and sh["split"] == "train"]
    )
    assert sorted(map(bytes, ours)) == sorted(map(bytes, theirs))  # the same windows (in partition order)
