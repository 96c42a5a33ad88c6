"""The documentation's promises that a build cannot check: the README stays a front door, and
every results file the docs cite is committed."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCS = sorted((REPO / "docs").glob("*.md"))


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/ (bar: 250)"
    text = "\n".join(lines)
    assert "make demo" in text and "make test" in text
    for page in re.findall(r"\]\((docs/[\w.-]+\.md)", text):
        assert (REPO / page).is_file(), f"README.md links to {page}, which does not exist"


def test_every_results_file_the_docs_name_is_committed():
    named = set()
    for page in DOCS:
        # A command's output (`--out benchmarks/results/X.json`) is where a run would write, not a citation.
        text = re.sub(r"--out benchmarks/results/\S+", "", page.read_text())
        named |= {m for m in re.findall(r"benchmarks/results/([\w./-]+\.(?:json|md))", text)}
        # The file columns and captions of docs/benchmarks.md name files by stem or bare file name.
        named |= {f"{m}.json" for m in re.findall(r"`(model(?:_[a-z]+)*)`", text) if m != "model_name"}  # a parameter
        named |= {f"transfer/{m}" for m in re.findall(r"`((?:ais|geolife)_to_[\w.-]+\.json)`", text)}
    assert named, "the docs name no results file: the pattern no longer matches how they cite them"
    missing = sorted(n for n in named if not (RESULTS / n).is_file())
    assert not missing, f"docs cite results files that are not committed: {missing}"


def test_mkdocs_nav_lists_only_existing_pages():
    nav = re.findall(r"^\s*- (?:[^:#\n]+: )?([\w.-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    assert "index.md" in nav
    assert all((REPO / "docs" / page).is_file() for page in nav), nav
