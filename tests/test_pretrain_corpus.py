"""What the pretrain flow asks of the library about a corpus: preprocessing at each source's
native interval (never upsampled), the source's own cleaning overrides on top, and mixing
probabilities over the windows the shards really hold."""

from __future__ import annotations

import json

import pytest
from pretrain_data import generated_shards

from trajfm.data.clean import KIND_DEFAULTS, normalize_params
from trajfm.train.pretrain import corpus_mixing, source_preprocess_params


def Source(name="s", clean=None, weight=1.0):  # noqa: N802 (a corpus source, as load_corpus makes them)
    from trajfm.data.corpus import CorpusSource

    return CorpusSource(
        name=name, paths=("unused.parquet",), format="canonical", kind=None, weight=weight, clean=clean or {}
    )


def test_every_kind_is_resampled_at_its_native_interval():
    table = source_preprocess_params(Source())
    assert set(table) == set(KIND_DEFAULTS)
    for kind, fields in table.items():
        assert fields["interval_s"] == 1.0 and fields["upsample_tolerance"] == 1.0, kind
        assert fields["v_max_mps"] == KIND_DEFAULTS[kind].v_max_mps  # the kind's cleaning kept
    normalize_params(table)  # the preprocess stage accepts it


def test_a_source_cleaning_overrides_apply_flat_or_per_kind():
    flat = source_preprocess_params(Source(clean={"v_max_mps": 3.0}))
    assert all(f["v_max_mps"] == 3.0 and f["upsample_tolerance"] == 1.0 for f in flat.values())
    per_kind = source_preprocess_params(Source(clean={"bus": {"max_gap_s": 120.0}}))
    assert (
        per_kind["bus"]["max_gap_s"] == 120.0 and per_kind["vessel"]["max_gap_s"] == KIND_DEFAULTS["vessel"].max_gap_s
    )
    assert per_kind["bus"]["upsample_tolerance"] == 1.0


def test_mixing_follows_the_corpus_over_the_windows_in_the_shards(tmp_path):
    from dataclasses import dataclass

    generated_shards(tmp_path)

    @dataclass
    class C:
        sources: tuple
        temperature: float = 2.0
        path: str = "test"

    corpus = C((Source("ships"), Source("boats", weight=2.0), Source("ferries"), Source("planes")))
    p = corpus_mixing(corpus, tmp_path / "shards")
    counts = {
        s: v["windows"]["train"]
        for s, v in json.loads((tmp_path / "shards" / "shards.json").read_text())["sources"].items()
    }
    assert p["planes"] == 0.0 and sum(p.values()) == pytest.approx(1.0)
    raw = {"ships": counts["ships"] ** 0.5, "boats": 2.0 * counts["boats"] ** 0.5, "ferries": counts["ferries"] ** 0.5}
    for s, v in raw.items():
        assert p[s] == pytest.approx(v / sum(raw.values()))
