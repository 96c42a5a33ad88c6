"""Corpus files (trajfm.data.corpus): loading corpora/base.yaml, validation errors, mixing, lineage."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trajfm.data.corpus import CorpusError, load_corpus, mixing_probabilities

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus_dir(shared_data) -> Path:
    d = shared_data / "corpus"
    if not d.is_dir():
        pytest.skip(f"{d} not found: the 16-source pre-training corpus is unavailable")
    return d


def _canonical(path: Path, kinds=("bus",), n: int = 30, seed: int = 0) -> Path:
    """A small canonical Parquet file of one trajectory per kind (1 min fixes, moving east)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i, kind in enumerate(kinds):
        t = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(n) * 60, unit="s")
        frames.append(
            pd.DataFrame(
                {
                    "traj_id": f"{kind}-{i}",
                    "obj_id": f"m{i}",
                    "t": t.astype("datetime64[ns, UTC]"),
                    "lon": 10.0 + np.cumsum(rng.uniform(1e-4, 2e-4, n)),
                    "lat": 50.0 + i * 0.01,
                    "kind": kind,
                    "source": "test",
                }
            )
        )
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)
    return path


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


GOOD = """
name: tiny
temperature: 2.0
coarsen: [1, 2]
sources:
  - name: a
    paths: a.parquet
    format: canonical
    kind: null
    weight: 1.0
  - name: b
    paths: [b.parquet]
    format: canonical
    kind: tram
    weight: 3
"""


@pytest.fixture
def tiny(tmp_path) -> Path:
    _canonical(tmp_path / "a.parquet", kinds=("bus", "tram"))
    _canonical(tmp_path / "b.parquet", kinds=("tram",), seed=1)
    return _write(tmp_path, GOOD)


def test_load_tiny_corpus_resolves_paths_against_the_yaml_folder(tiny, tmp_path):
    c = load_corpus(tiny)
    assert c.name == "tiny" and c.temperature == 2.0 and c.coarsen == (1, 2)
    assert [s.name for s in c.sources] == ["a", "b"]
    a, b = c.sources
    assert a.paths == (str((tmp_path / "a.parquet").resolve()),) and a.kind is None and a.weight == 1.0
    assert b.kind == "tram" and b.weight == 3.0 and b.ingest_params() == {"format": "canonical", "kind": "tram"}
    assert c.path == str(tiny.resolve())


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("weight: 1.0", "weight: 0", "weight must be a finite number > 0, got 0"),
        ("weight: 1.0", "weight: -2", "weight must be a finite number > 0, got -2"),
        ("weight: 1.0", "weight: heavy", "weight must be a number > 0, got 'heavy'"),
        ("weight: 1.0", "weight: .nan", "weight must be a finite number > 0"),
        ("kind: tram", "kind: spaceship", "unknown kind 'spaceship'; known: ["),
        ("format: canonical\n    kind: null", "format: parquet\n    kind: null", "unknown format 'parquet'; known: ["),
        ("paths: [b.parquet]", "paths: [nowhere.parquet]", "nowhere.parquet does not exist"),
        ("name: b", "name: a", "name 'a' is a duplicate of sources[0]"),
        ("weight: 3", "weight: 3\n    wieght: 2", "unknown key(s) ['wieght']; known: ['name', 'paths'"),
        ("temperature: 2.0", "temperature: 2.0\nmix: 1", "unknown key(s) ['mix']; known: ['name'"),
        ("temperature: 2.0", "temperature: 0", "temperature must be a finite number > 0"),
        ("coarsen: [1, 2]", "coarsen: [1, 0.5]", "coarsen must be a list of whole multipliers >= 1"),
        ("coarsen: [1, 2]", "coarsen: [2, 2]", "coarsen has repeated multipliers"),
        ("    weight: 3\n", "    weight: 3\n    clean: {v_max: 3}\n", "clean: unknown parameter"),
        ("    weight: 3\n", "    weight: 3\n    reader_params: {columns: {}}\n", "does not take option(s) ['columns']"),
    ],
)
def test_bad_corpus_files_fail_with_one_clear_error_naming_file_and_entry(tiny, old, new, message):
    text = tiny.read_text()
    assert old in text
    tiny.write_text(text.replace(old, new, 1))
    with pytest.raises(CorpusError) as err:
        load_corpus(tiny)
    text = str(err.value)
    assert text.startswith(f"corpus {tiny}") and message in text, text
    entry_level = "temperature" not in old and "coarsen" not in old
    if entry_level:
        assert "sources[" in text


def test_unknown_kind_inside_a_canonical_file_is_named(tmp_path):
    _canonical(tmp_path / "a.parquet", kinds=("bus", "hovercraft"))
    _canonical(tmp_path / "b.parquet", kinds=("tram",))
    p = _write(tmp_path, GOOD)
    with pytest.raises(CorpusError, match=r"sources\[0\] \(a\).*kind value\(s\) \['hovercraft'\]"):
        load_corpus(p)
    # Forcing a kind on the entry is the way out.
    p.write_text(GOOD.replace("kind: null", "kind: bus", 1))
    assert load_corpus(p).sources[0].kind == "bus"


def test_missing_corpus_file_and_non_canonical_parquet(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file .*nope.yaml does not exist"):
        load_corpus(tmp_path / "nope.yaml")
    pd.DataFrame({"x": [1.0], "y": [2.0]}).to_parquet(tmp_path / "a.parquet")
    _canonical(tmp_path / "b.parquet")
    with pytest.raises(CorpusError, match=r"a.parquet is not canonical Parquet \(lacks \['traj_id'"):
        load_corpus(_write(tmp_path, GOOD))


def test_mixing_probabilities_follow_the_temperature_rule(tiny):
    c = load_corpus(tiny)
    p = mixing_probabilities(c, {"a": 400, "b": 100})
    # p_s ∝ w_s * n_s ** (1 / T): 1 * 400 ** 0.5 = 20, 3 * 100 ** 0.5 = 30.
    assert p == pytest.approx({"a": 0.4, "b": 0.6})
    assert math.isclose(sum(p.values()), 1.0)
    assert mixing_probabilities(c, {"a": 0, "b": 5}) == {"a": 0.0, "b": 1.0}
    with pytest.raises(CorpusError, match=r"missing \['b'\], unknown \['c'\]"):
        mixing_probabilities(c, {"a": 1, "c": 2})
    with pytest.raises(CorpusError, match="every source has count 0"):
        mixing_probabilities(c, {"a": 0, "b": 0})
    with pytest.raises(CorpusError, match="counts must be >= 0"):
        mixing_probabilities(c, {"a": -1, "b": 2})


def test_sha256_changes_with_content_and_corpus_not_with_location(tiny, tmp_path):
    h = load_corpus(tiny).sha256()
    assert len(h) == 64 and h == load_corpus(tiny).sha256()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("a.parquet", "b.parquet", "c.yaml"):
        shutil.copy(tmp_path / name, moved / name)
    assert load_corpus(moved / "c.yaml").sha256() == h  # lineage is content, not where it lies
    _canonical(moved / "b.parquet", kinds=("tram",), seed=2)  # same shape, other positions
    assert load_corpus(moved / "c.yaml").sha256() != h
    tiny.write_text(tiny.read_text().replace("weight: 3", "weight: 4"))
    assert load_corpus(tiny).sha256() != h


def test_base_corpus_names_every_real_source(corpus_dir):
    c = load_corpus("base")
    assert c.path == str((REPO / "corpora" / "base.yaml").resolve())
    by_name = {s.name: s for s in c.sources}
    parquet = sorted(p.name for p in corpus_dir.glob("*.parquet"))
    assert len(parquet) == 16
    named = sorted(Path(f).name for s in c.sources if s.format == "canonical" for f in s.files())
    assert named == parquet
    assert by_name["embedded_ais"].format == "tracktable" and len(by_name["embedded_ais"].files()) == 4
    assert by_name["embedded_ais_nyharbor_csv"].format == "marinecadastre"  # the demo's five files, all
    assert by_name["geolife_sample"].format == "geolife" and len(by_name["geolife_sample"].files()) > 100
    assert by_name["liverpool_bus"].reader_params["timezone"] == "Europe/London"
    assert all(s.weight > 0 for s in c.sources) and c.coarsen == (1, 2, 4)
    counts = {s.name: 1000 for s in c.sources}
    p = mixing_probabilities(c, counts)
    assert math.isclose(sum(p.values()), 1.0)
    assert len(c.sha256()) == 64


def test_preprocess_params_resample_each_source_at_its_native_rate(tiny, tmp_path):
    c = load_corpus(tiny)
    native = c.sources[0].preprocess_params()
    assert native["bus"].interval_s == 1.0 and native["bus"].upsample_tolerance == 1.0
    assert native["bus"].v_max_mps == 35.0  # the kind's other defaults stay
    text = tiny.read_text().replace("    weight: 3\n", "    weight: 3\n    clean: {tram: {v_max_mps: 12}}\n")
    tiny.write_text(text)
    b = load_corpus(tiny).sources[1]
    assert b.preprocess_params()["tram"].v_max_mps == 12 and b.preprocess_params()["tram"].interval_s == 1.0
    assert b.preprocess_params(native=False)["tram"].interval_s == 30.0


def test_clean_report_accounts_for_every_row(tiny):
    from trajfm.data.corpus import clean_report

    report = clean_report(load_corpus(tiny))
    assert list(report[["source", "kind"]].itertuples(index=False, name=None)) == [
        ("a", "bus"),
        ("a", "tram"),
        ("b", "tram"),
    ]
    reasons = ["duplicate_fix", "duplicate_time", "speed_outlier", "stop", "generalized", "short_trajectory"]
    assert (report["rows_in"] == report["rows_kept"] + report[reasons].sum(axis=1)).all()
    assert report["rows_in"].sum() == 90 and (report["interval_s"] == 60.0).all()  # 1 min data: bus 30 s x 1.5 < 60
