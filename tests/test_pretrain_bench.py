"""``trajfm bench pretrain`` at a tiny scale: every measure of the issue is there, with the
numbers it is made of, and the markdown table beside the JSON (speed is reported, never asserted)."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

pytestmark = pytest.mark.slow


def test_bench_pretrain_writes_every_measure(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: the replica copies the real corpus")
    from trajfm.cli import main

    out = tmp_path / "pretrain.json"
    assert (
        main(
            [
                "bench",
                "pretrain",
                "--out",
                str(out),
                "--scale",
                "0.001",
                "--steps",
                "6",
                "--batch",
                "8",
                "--max-windows",
                "16",
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    assert r["stream_vs_memory_speed"] == pytest.approx(r["stream_points_per_s"] / r["memory_points_per_s"])
    assert r["corpus"]["10"]["points"] >= 9 * r["corpus"]["1"]["points"] > 0  # the corpus grew 10x
    assert r["rss_growth_10x"] == pytest.approx(
        r["corpus"]["10"]["peak_rss_bytes"] / r["corpus"]["1"]["peak_rss_bytes"]
    )
    assert isinstance(r["ddp_matches_single"], bool) and r["ddp_max_loss_diff"] >= 0
    assert len(r["ddp_losses_2proc"]) == len(r["ddp_losses_1proc"]) >= 1
    assert set(r["bars"]) == {"stream_vs_memory_speed >= 0.9", "rss_growth_10x <= 1.1", "ddp_matches_single"}
    table = out.with_suffix(".md").read_text()
    assert "rss_growth_10x" in table and "stream_vs_memory_speed" in table
