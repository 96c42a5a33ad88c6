"""The zero-shot protocol matrix over the corpus (protocols/corpus_*.yaml): each loads, points at
real files, and holds its kind or region out of training (no training here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trajfm.evaluate.transfer import load_protocol

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"
KIND_HELD_OUT = {
    "corpus_storms_heldout": {"storm"},
    "corpus_drifters_heldout": {"drifter"},
    "corpus_transit_heldout": {"bus", "tram", "trolleybus"},
    "corpus_birds_heldout": {"bird"},
    "corpus_taxis_heldout": {"vehicle"},
    "corpus_ships_heldout": {"vessel"},
}
REGION_HELD_OUT = {"corpus_europe_heldout": [-25.0, 34.0, 45.0, 72.0]}
FORMAT_KINDS = {"tracktable": "vessel", "geolife": "person"}


def _kinds(spec) -> set[str]:
    """Kinds a protocol source yields: its ``kind``, else the canonical files' kind values."""
    from trajfm.data.corpus import parquet_kinds

    if spec.kind:
        return {spec.kind}
    if spec.format == "canonical":
        return {k for d in spec.data for k in parquet_kinds(d)}
    return {FORMAT_KINDS[spec.format]}


def test_the_matrix_is_complete_and_every_protocol_parses():
    names = sorted(p.stem for p in PROTOCOLS.glob("corpus_*.yaml"))
    assert names == sorted({**KIND_HELD_OUT, **REGION_HELD_OUT})
    for name in names:
        proto = load_protocol(PROTOCOLS / f"{name}.yaml")
        assert proto.name == name and proto.description and proto.train and proto.heldout
        assert proto.window == 32 and proto.fine_tune_frac == 0.3


@pytest.mark.parametrize("name", sorted(KIND_HELD_OUT))
def test_leave_one_kind_out_keeps_the_kind_out_of_training(shared_data, name):
    from trajfm.data.catalog import embedded_files
    from trajfm.data.clean import KIND_DEFAULTS

    proto = load_protocol(PROTOCOLS / f"{name}.yaml")
    train_files, held_files = set(), set()
    for spec, files in [(s, train_files) for s in proto.train] + [(s, held_files) for s in proto.heldout]:
        for item in spec.data:
            if item.startswith("embedded:"):
                files.update(str(p) for p in embedded_files(item[len("embedded:") :]))
            else:
                assert Path(item).exists(), f"{name}: {item} does not exist"
                assert Path(item).is_relative_to(shared_data.resolve()), item
                files.add(item)
    assert not train_files & held_files
    train_kinds = set().union(*(_kinds(s) for s in proto.train))
    held_kinds = set().union(*(_kinds(s) for s in proto.heldout))
    assert held_kinds == KIND_HELD_OUT[name]
    assert not train_kinds & held_kinds, f"{name}: {train_kinds & held_kinds} in training"
    assert (train_kinds | held_kinds) <= set(KIND_DEFAULTS)  # every kind has cleaning defaults
    # Everything else of the corpus is in training (the birds protocol leaves out one mixed file).
    corpus = sorted((shared_data / "corpus").glob("*.parquet"))
    used = {Path(f).name for f in train_files | held_files}
    missing = [p.name for p in corpus if p.name not in used]
    assert missing == (["movebank_vulture_bats.parquet"] if name == "corpus_birds_heldout" else [])


def test_leave_one_region_out_selects_by_the_same_box(shared_data):
    ((name, box),) = REGION_HELD_OUT.items()
    proto = load_protocol(PROTOCOLS / f"{name}.yaml")
    assert all(
        s.selection.get("exclude_bbox") == tuple(box) or list(s.selection.get("exclude_bbox")) == box
        for s in proto.train
    )
    assert all(list(s.selection.get("bbox")) == box for s in proto.heldout)
    for s in proto.train + proto.heldout:
        for item in s.data:
            assert item.startswith("embedded:") or Path(item).exists(), item
    assert not {d for s in proto.train for d in s.data} & {d for s in proto.heldout for d in s.data}
