"""Transfer protocols: parsing with clear errors, trajectory selection, and a tiny run end to end.

The tiny protocol trains on the morning of one New York Harbor day and holds out its afternoon
(a few dozen steps, so the machinery is what is tested, not the model); the shipped protocols
parse and point at real data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from trajfm.evaluate.suite import check_selection, selected_trajectories
from trajfm.evaluate.transfer import ProtocolError, load_protocol, run_protocol, summarize

PROTOCOLS = Path(__file__).resolve().parents[1] / "protocols"

TINY = """
name: tiny
description: morning -> afternoon of one NY Harbor day
train:
  - data: embedded:small
    time_range: [null, "2020-12-08T12:00:00Z"]
heldout:
  - data: embedded:small
    time_range: ["2020-12-08T12:00:00Z", null]
fine_tune: {frac: 0.4, val_frac: 0.1}
tasks: [forecast]
"""


def _write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: [{data: a}]\n", "'heldout' must be a non-empty list"),
        ("train: [{data: a}]\nheldout: []\n", "'heldout' must be a non-empty list"),
        ("train: [{data: a}]\nheldout: [{data: b}]\ncolour: red\n", "unknown key(s) ['colour']"),
        ("train: [{data: a, speed: 3}]\nheldout: [{data: b}]\n", "train[0]: unknown key(s) ['speed']"),
        ("train: [{data: 3}]\nheldout: [{data: b}]\n", "train[0].data must be a path"),
        (
            "train: [{data: a}]\nheldout: [{data: b, format: shapefile}]\n",
            "heldout[0].format 'shapefile' is not a reader",
        ),
        (
            "train: [{data: a, bbox: [1, 2, 3]}]\nheldout: [{data: b}]\n",
            "train[0]: bbox must be [lon_min, lat_min, lon_max, lat_max]",
        ),
        (
            "train: [{data: a, time_range: [2020-02-01, 2020-01-01]}]\nheldout: [{data: b}]\n",
            "start must be before end",
        ),
        ("train: [{data: a}]\nheldout: [{data: b}]\nfine_tune: {frac: 0.8, val_frac: 0.3}\n", "frac + val_frac < 1"),
        ("train: [{data: a}]\nheldout: [{data: b}]\ntasks: [forecast, teleport]\n", "tasks: unknown task"),
        ("train: [{data: a}]\nheldout: [{data: b}]\nwindow: 1\n", "window must be an integer >= 2"),
        (
            "train: [{data: a}]\nheldout: [{data: b, clean: {interval: 3}}]\n",
            "heldout[0]: clean must map cleaning parameters",
        ),
        ("train: [{data: a}]\nheldout: [{data: b, clean: {interval_s: -5}}]\n", "heldout[0]: interval_s must be > 0"),
        ("train: [{data: a}\n", "not valid YAML"),
        ("- just a list\n", "must be a mapping"),
    ],
)
def test_protocol_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ProtocolError) as exc:
        load_protocol(path)
    assert message in str(exc.value) and str(path) in str(exc.value)


def test_missing_protocol_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_protocol(tmp_path / "nope.yaml")


def test_shipped_protocols_parse_and_point_at_real_data():
    from trajfm.data.catalog import embedded_files

    # The zero-shot protocols over the corpus (corpus_*.yaml) are checked in test_corpus_protocols.py.
    names = sorted(p.stem for p in PROTOCOLS.glob("*.yaml") if not p.stem.startswith("corpus_"))
    assert names == ["ais_to_geolife", "ais_to_nyharbor_dec", "ais_to_nyharbor_dec_120s", "geolife_to_liverpool_bus"]
    shared = PROTOCOLS.parent.parent / "shared" / "data"
    for name in names:
        proto = load_protocol(PROTOCOLS / f"{name}.yaml")
        assert proto.name == name and proto.description
        for spec in proto.train + proto.heldout:
            for item in spec.data:
                if item.startswith("embedded:"):
                    assert embedded_files(item[len("embedded:") :])  # a real file of the catalog
                else:  # relative to the protocol file: the project's ../shared/data
                    assert Path(item).is_relative_to(shared.resolve()), item
    nyh = load_protocol(PROTOCOLS / "ais_to_nyharbor_dec.yaml")
    train_files = [d for s in nyh.train for d in s.data]
    held_files = [d for s in nyh.heldout for d in s.data]
    assert all("NYHarbor" not in f and "2020_12" not in f for f in train_files)  # region and season held out
    assert all("NYHarbor_2020_12" in f for f in held_files)
    assert all(s.selection.get("exclude_bbox") for s in nyh.train)
    slow = load_protocol(PROTOCOLS / "ais_to_nyharbor_dec_120s.yaml")  # the same, resampled at 120 s
    assert [s.data for s in slow.train + slow.heldout] == [s.data for s in nyh.train + nyh.heldout]
    assert [s.clean for s in slow.heldout] == [{"interval_s": 120.0}] and all(not s.clean for s in slow.train)


def test_clean_overrides_reach_preprocessing(tmp_path):
    """A source's ``clean`` mapping overrides the kind's cleaning defaults: resampled at 120 s
    instead of the vessel default 60 s, every step of the windows is 120 s apart."""
    import numpy as np

    from trajfm.evaluate.transfer import SourceSpec, source_features
    from trajfm.features.windows import load_features

    gaps = {}
    for clean in ({}, {"interval_s": 120.0}):
        feat, acc = source_features([SourceSpec(["embedded:small"], clean=clean)], tmp_path, 32, 0.8, 0.15)
        sets, _ = load_features(feat)
        ws = sets["train"]
        inner = ws.mask.copy()
        inner[:, 0] = False  # a window's first step may come from before it
        gaps[clean.get("interval_s", 60.0)] = np.unique(np.round(np.expm1(ws.x[..., 2][inner].astype(np.float64))))
        pre = acc["sources"][0]["preprocess"]
        assert pre["rows_in"] == pre["rows_kept"] + pre["rows_quarantined"]
    assert set(gaps[60.0]) <= {0.0, 60.0} and 60.0 in gaps[60.0]
    assert set(gaps[120.0]) <= {0.0, 120.0} and 120.0 in gaps[120.0]


def test_selection_keeps_or_drops_whole_trajectories():
    t0 = pd.Timestamp("2020-12-08T00:00:00Z")
    pts = pd.DataFrame(
        {
            "traj_id": ["a", "a", "b", "b", "c", "c"],
            "lon": [-74.0, -73.0, -70.0, -70.1, -74.0, -74.1],
            "lat": [40.5, 40.0, 38.0, 38.1, 40.6, 40.7],
            "t": [
                t0,
                t0 + pd.Timedelta(minutes=1),
                t0 + pd.Timedelta(hours=13),
                t0 + pd.Timedelta(hours=14),
                t0 + pd.Timedelta(hours=11),
                t0 + pd.Timedelta(hours=12, minutes=30),
            ],
        }
    )
    box = [-74.5, 40.3, -73.5, 41.0]
    # a touches the box once: dropped whole; b never does; c lies inside
    assert selected_trajectories(pts, {"exclude_bbox": box}).tolist() == [False, False, True, True, False, False]
    assert selected_trajectories(pts, {"bbox": box}).tolist() == [False, False, False, False, True, True]
    # by start time: c starts before noon and ends after it, and belongs to the morning
    noon = "2020-12-08T12:00:00Z"
    assert selected_trajectories(pts, {"time_range": [None, noon]}).tolist() == [True, True, False, False, True, True]
    assert selected_trajectories(pts, {"time_range": [noon, None]}).tolist() == [False, False, True, True, False, False]
    assert check_selection({"time_range": ["2020-12-08", None]}) == {"time_range": ["2020-12-08T00:00:00+00:00", None]}


def test_summary_is_mean_and_std_over_seeds():
    s = summarize({"0": {"f.ade.m": 1.0, "f.fde.m": 2.0}, "1": {"f.ade.m": 3.0}})
    assert s == {"f.ade.m": {"mean": 2.0, "std": 1.0, "n": 2}}  # a key one seed lacks is left out


@pytest.mark.slow
def test_tiny_protocol_runs_zero_shot_and_fine_tuned_deterministically(tmp_path, capsys):
    from trajfm.evaluate.cli import main

    path = _write(tmp_path, TINY)
    kw = dict(epochs=1, max_steps=6, fine_tune_steps=4, batch_size=16, compare_tutorial=False)
    a = run_protocol(path, "tutorial", root=tmp_path / "a", seeds=(0, 1), **kw)
    s = a["summary"]
    for predictor in ("tutorial@zero-shot", "tutorial@fine-tuned", "constant_velocity"):
        v = s[f"forecast.ade_m@10.{predictor}"]
        assert v["n"] == 2 and math.isfinite(v["mean"]) and v["mean"] > 0 and math.isfinite(v["std"])
    assert s["forecast.ade_m@10.tutorial@zero-shot"]["std"] > 0  # two seeds, two models
    assert s["forecast.ade_m@10.constant_velocity"]["std"] == 0  # the baseline has no seed
    assert (
        a["runs"]["0"]["forecast.ade_m@10.tutorial@zero-shot"]
        != a["runs"]["0"]["forecast.ade_m@10.tutorial@fine-tuned"]
    )
    held, train = a["accounting"]["heldout"], a["accounting"]["train"]
    assert held["select"]["rows_in"] == held["select"]["rows_kept"] + held["select"]["rows_filtered"]
    # morning and afternoon of one file: every processed point lands on exactly one side
    assert train["select"]["rows_kept"] + held["select"]["rows_kept"] == held["select"]["rows_in"]
    assert a["heldout_windows"]["eval"] > 0 and a["heldout_windows"]["fine_tune"] > 0
    # same seed, fresh data root (everything retrained): same numbers
    b = run_protocol(path, "tutorial", root=tmp_path / "b", seeds=(0,), **kw)
    assert b["runs"]["0"] == a["runs"]["0"]
    # the command prints the mean ± std table and writes the JSON
    out = tmp_path / "t.json"
    assert (
        main(
            [
                "--protocol",
                str(path),
                "--preset",
                "tutorial",
                "--epochs",
                "1",
                "--max-steps",
                "6",
                "--fine-tune-steps",
                "4",
                "--batch-size",
                "16",
                "--seeds",
                "0",
                "--data-root",
                str(tmp_path / "b"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "tutorial@zero-shot" in printed and "±" in printed and out.is_file()


def test_fine_tune_learning_rate_reaches_the_fine_tune_only(tmp_path):
    from trajfm.store import read_manifest

    path = _write(tmp_path, TINY)
    kw = dict(
        epochs=1, max_steps=6, fine_tune_steps=4, batch_size=16, compare_tutorial=False, seeds=(0,), root=tmp_path / "r"
    )
    default = run_protocol(path, "tutorial", **kw)
    low = run_protocol(path, "tutorial", fine_tune_lr=1e-5, **kw)
    for res, lr in ((default, 1e-3), (low, 1e-5)):
        dirs = res["trained"]["0/tutorial"]
        assert read_manifest(Path(dirs["fine-tuned"]))["train_config"]["lr"] == lr
        assert read_manifest(Path(dirs["zero-shot"]))["train_config"]["lr"] == 1e-3  # training keeps its own
    assert low["trained"]["0/tutorial"]["zero-shot"] == default["trained"]["0/tutorial"]["zero-shot"]  # reused
    assert low["settings"]["fine_tune_lr"] == 1e-5 and default["settings"]["fine_tune_lr"] is None
    key = "forecast.ade_m@10.tutorial@fine-tuned"
    assert low["runs"]["0"][key] != default["runs"]["0"][key]
    with pytest.raises(ValueError, match="fine_tune_lr must be > 0"):
        run_protocol(path, "tutorial", fine_tune_lr=0.0, **kw)


@pytest.mark.slow
def test_a_base_model_is_scored_zero_shot_and_fine_tuned_beside_an_in_domain_model(tmp_path, capsys):
    """A base model (here: the protocol's own zero-shot model, so its rows must equal that model's)
    scored on the held-out windows; without training on the train sources; bars per model."""
    from trajfm.evaluate.cli import main

    path = _write(tmp_path, TINY)
    kw = dict(epochs=1, max_steps=6, fine_tune_steps=4, batch_size=16, compare_tutorial=False, seeds=(0,))
    first = run_protocol(path, "tutorial", root=tmp_path / "r", **kw)
    zero_shot_dir = Path(first["trained"]["0/tutorial"]["zero-shot"])
    assert "forecast.ade_m@10.tutorial@in-domain" in first["summary"]  # the held-out data alone
    assert first["trained"]["0/tutorial"]["in-domain"] != str(zero_shot_dir)
    # the YAML's model: key, relative to the file, and no training on the train sources
    with_model = _write(tmp_path, TINY + f"model: {zero_shot_dir.relative_to(tmp_path)}\n", "m.yaml")
    res = run_protocol(with_model, "tutorial", root=tmp_path / "r", train_sources=False, **kw)
    run = res["runs"]["0"]
    for metric in ("ade_m@10", "fde_m@1", "fde_m@10"):
        assert run[f"forecast.{metric}.base@zero-shot"] == first["runs"]["0"][f"forecast.{metric}.tutorial@zero-shot"]
        assert run[f"forecast.{metric}.base@fine-tuned"] == first["runs"]["0"][f"forecast.{metric}.tutorial@fine-tuned"]
        assert (
            run[f"forecast.{metric}.tutorial@in-domain"] == first["runs"]["0"][f"forecast.{metric}.tutorial@in-domain"]
        )
    assert not any(k.endswith("tutorial@zero-shot") for k in run)  # not trained on the train sources
    assert res["accounting"]["train"] is None and res["settings"]["train_sources"] is False
    assert res["base_model"]["checkpoint_sha256"] and Path(res["trained"]["0/base"]["zero-shot"]).is_file()
    bars = res["bars"]["base@zero-shot"]
    cv = res["summary"]["forecast.ade_m@10.constant_velocity"]["mean"]
    assert bars["ade_m@10_vs_constant_velocity"] == pytest.approx(
        1 - res["summary"]["forecast.ade_m@10.base@zero-shot"]["mean"] / cv
    )
    # the command line: --base-model overrides the file's key; the bars are printed
    out = tmp_path / "b.json"
    args = ["--protocol", str(path), "--preset", "tutorial", "--epochs", "1", "--max-steps", "6"]
    args += ["--fine-tune-steps", "4", "--batch-size", "16", "--seeds", "0", "--data-root", str(tmp_path / "r")]
    args += ["--base-model", str(zero_shot_dir), "--no-train-sources", "--no-in-domain", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "base@zero-shot" in printed and "zero-shot bars, base@zero-shot: ADE@10" in printed
    assert not any("in-domain" in k for k in json.loads(out.read_text())["summary"])


def test_zero_shot_bars_read_the_means_over_seeds():
    from trajfm.evaluate.transfer import zero_shot_bars

    def entry(v):
        return {"mean": v, "std": 0.0, "n": 3}

    summary = {
        "forecast.ade_m@10.constant_velocity": entry(100.0),
        "forecast.ade_m@10.base@zero-shot": entry(70.0),
        "forecast.fde_m@1.constant_velocity": entry(10.0),
        "forecast.fde_m@1.base@zero-shot": entry(11.0),
        "forecast.fde_m@10.constant_velocity": entry(200.0),
        "forecast.fde_m@10.base@zero-shot": entry(150.0),
        "forecast.fde_m@5min.base@zero-shot": entry(1e9),  # minutes are not steps
    }
    bars = zero_shot_bars(summary, "base@zero-shot")
    assert bars["ade_m@10_vs_constant_velocity"] == pytest.approx(0.3)
    assert bars["worse_than_constant_velocity_at_steps"] == [1] and bars["meets_bars"] is False
    summary["forecast.fde_m@1.base@zero-shot"] = entry(9.0)
    assert zero_shot_bars(summary, "base@zero-shot")["meets_bars"] is True
    assert zero_shot_bars(summary, "other@zero-shot") is None


def test_a_protocol_model_key_must_name_a_model(tmp_path):
    with pytest.raises(ProtocolError, match="model must be a model URI or path"):
        load_protocol(_write(tmp_path, TINY + "model: 3\n"))
    assert load_protocol(_write(tmp_path, TINY + "model: models:/trajfm-base@champion\n")).model == (
        "models:/trajfm-base@champion"
    )
    with pytest.raises(ValueError, match="nothing to score"):
        run_protocol(_write(tmp_path, TINY), "tutorial", root=tmp_path / "x", train_sources=False, in_domain=False)


def test_select_stage_accounts_rows_and_refuses_overlapping_entries(tmp_path):
    from trajfm.evaluate.suite import ingest_and_clean, select_stage
    from trajfm.store import read_manifest

    _, pre = ingest_and_clean("embedded:small", root=tmp_path)
    noon = "2020-12-08T12:00:00Z"
    both = select_stage([(pre, {"time_range": [None, noon]}), (pre, {"time_range": [noon, None]})], tmp_path)
    m = read_manifest(both)
    assert m["rows_in"] == 2 * read_manifest(pre)["rows_out"]  # each entry reads the whole table
    assert m["rows_kept"] == read_manifest(pre)["rows_out"]  # morning + afternoon = every point once
    assert m["rows_in"] == m["rows_kept"] + m["rows_filtered"]
    with pytest.raises(ValueError, match="more than one source entry"):
        select_stage([(pre, {}), (pre, {"time_range": [noon, None]})], tmp_path)
