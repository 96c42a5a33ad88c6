"""The model benchmark's own pieces: the linear-extrapolation baseline, the transformers twin
it races against (same computation), the GPU MFU script's refusal without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.model import forecast_errors, linear_extrapolation
from helpers import bench_result
from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    straight_track,
    windows_from_tracks,
)
from trajfm.evaluate.forecast import constant_velocity, forecastable
from trajfm.geo import haversine_m


def test_linear_extrapolation_is_exact_on_a_straight_track_and_cv_with_two_points():
    # (exact up to the centimetre: one long offset in the last fix's tangent plane vs many short ones)
    lon, lat, t = straight_track(40, east_m=30.0, north_m=-40.0, dt_ns=60_000_000_000)
    ws = windows_from_tracks([("a", lon, lat, t)], window=32)
    pred_lon, pred_lat, pred_t = linear_extrapolation(ws, context_len=20, horizon=10)
    err = forecast_errors(pred_lon, pred_lat, ws.lon[:, 20:30], ws.lat[:, 20:30])
    assert err["fde_m@10"] < 0.05 and set(err) == {f"{a}_m@{k}" for k in (1, 5, 10) for a in ("ade", "fde")}
    assert np.array_equal(pred_t, ws.t_ns[:, 20:30])

    noisy = make_windows(n_tracks=6, points=60, window=32, seed=3)
    two = linear_extrapolation(noisy, context_len=20, horizon=10, fit_points=2)
    cv = constant_velocity(noisy, context_len=20, horizon=10)
    apart = haversine_m(two[0], two[1], cv[0], cv[1])  # (N, 10) metres
    sel = forecastable(noisy, 20, 10)
    step = haversine_m(cv[0][:, 0], cv[1][:, 0], noisy.lon[sel, 19], noisy.lat[sel, 19])
    assert apart[:, 0].max() < 1e-3 * step.max()  # the same velocity ...
    assert apart.max() < 1e-2 * 10 * step.max()  # ... walked in one tangent plane, not ten
    assert np.array_equal(two[2], cv[2])


def test_the_transformers_twin_computes_the_same_loss():
    pytest.importorskip("transformers")
    from benchmarks.model_speed import HFTrajGPT2, speed_batch
    from trajfm.model import GPTConfig, TrajGPT

    config = GPTConfig(n_layer=2, n_head=4, d_model=32, block_size=24, dropout=0.0)
    mean, std = torch.tensor([1.0, -2.0, 4.1, 0, 0, 0, 0]), torch.tensor([300.0, 250.0, 0.3, 1, 1, 1, 1])
    torch.manual_seed(0)
    hf = HFTrajGPT2(config, mean, std).eval()
    ours = TrajGPT(config).eval()
    ours.set_normalization(mean.tolist(), std.tolist())
    with torch.no_grad():
        for _name, p in hf.gpt2.named_parameters():
            p.normal_(0.0, 0.1)
        for name, p in ours.transformer.named_parameters():
            src = hf.gpt2.get_parameter(name)
            conv1d = name.endswith(".weight") and any(k in name for k in ("c_attn", "c_proj", "c_fc"))
            p.copy_(src.t() if conv1d else src)
        ours.in_proj.load_state_dict(hf.in_proj.state_dict())
        ours.head.load_state_dict(hf.head.state_dict())
    x, mask = speed_batch(config, 8)
    assert not mask.all()  # some rows padded
    torch.testing.assert_close(ours.loss(x, mask), hf.loss(x, mask), rtol=1e-4, atol=1e-6)


def test_mfu_script_refuses_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    from benchmarks import mfu_gpu

    assert mfu_gpu.main(["--out", str(tmp_path / "mfu.json")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "mfu.json").exists()


def test_mfu_script_measures_the_largest_preset_end_to_end_on_cpu(tmp_path, capsys):
    """The GPU script's whole path (bf16 autocast step, FLOP count, JSON) on CPU, small sizes, so
    the day a GPU is lent it runs the code this test ran."""
    import json

    from benchmarks import mfu_gpu
    from trajfm.model import TrajGPT, list_presets, load_preset

    sizes = {p: TrajGPT(load_preset(p)).num_params() for p in list_presets()}
    assert mfu_gpu.largest_preset() == max(sizes, key=sizes.get)
    out = tmp_path / "mfu.json"
    assert (
        mfu_gpu.main(
            ["--out", str(out), "--device", "cpu", "--seq", "64", "--batch", "2", "--steps", "2", "--warmup", "1"]
        )
        == 0
    )
    r = json.loads(out.read_text())
    cfg = r["config"]
    assert r["preset"] == mfu_gpu.largest_preset() and r["seq_tokens"] == 64 // cfg["patching"]["patch_in"]
    model = TrajGPT(load_preset(r["preset"], block_size=64))
    wpe = model.transformer.wpe.weight.numel() if hasattr(model.transformer, "wpe") else 0
    assert r["params_in_flops"] == model.num_params() - wpe
    assert r["flops_per_token"] == 6 * r["params_in_flops"] + 12 * cfg["n_layer"] * cfg["d_model"] * r["seq_tokens"]
    step_s = r["step_ms"] / 1000
    assert r["achieved_tflops"] == pytest.approx(
        r["flops_per_token"] * 2 * r["seq_tokens"] / step_s / 1e12, rel=1e-2, abs=1e-3
    )
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"], rel=1e-2, abs=1e-5)
    assert '"device": "cpu (script check only)"' in capsys.readouterr().out


def _quality(presets: dict, val: dict | None = None, test_windows: int = 100, steps: int = 250) -> dict:
    """A dataset's quality section as ``evaluate_dataset`` writes it, errors given per predictor."""

    def errs(v):
        return {"ade_m@10": v / 2, "fde_m@10": float(v)}

    val = val or presets
    return {
        "data": {
            "windows": {"train": 10, "val": 3, "test": 3},
            "test_windows_evaluated": test_windows,
            "val_windows_evaluated": 50,
            "context_len": 20,
            "horizons": [1, 5, 10],
            "seconds": 1.0,
        },
        "training": {
            "train_overrides": {"max_steps": steps, "batch_size": 64},
            "per_preset": {
                p: {"train_s": 1.0} for p in presets if p not in ("constant_velocity", "linear_extrapolation")
            },
        },
        "results": {k: errs(v) for k, v in presets.items()},
        "val_results": {k: errs(v) for k, v in val.items()},
    }


def test_summarize_picks_the_best_preset_and_measures_it_against_the_targets():
    from benchmarks.model_results import summarize

    q = summarize(
        _quality(
            {"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 700, "b": 750},
            val={"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 800, "b": 760},
        )
    )
    assert q["best_preset"] == "a" and q["best_preset_by_val"] == "b"  # baselines never win the preset prize
    assert q["targets"]["best_vs_constant_velocity"] == pytest.approx(0.3)
    assert q["targets"]["best_vs_tutorial"] == pytest.approx(1 - 700 / 1200, abs=1e-4)


def test_merge_adds_new_presets_and_keeps_the_others():
    from benchmarks.model_results import merge_quality

    old = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 700})
    del old["val_results"]["a"]  # measured before validation errors were recorded
    new = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1100, "c": 600})
    new["data"]["seconds"] = 9.0  # timings differ between runs, windows do not
    q = merge_quality(old, new)
    assert list(q["results"]) == ["constant_velocity", "linear_extrapolation", "a", "c", "tutorial"]
    assert q["results"]["tutorial"]["fde_m@10"] == 1100  # the rerun replaces
    assert q["results"]["a"]["fde_m@10"] == 700 and set(q["training"]["per_preset"]) == {"tutorial", "a", "c"}
    assert q["best_preset"] == "c" and q["best_preset_by_val"] is None  # "a" has no validation errors
    assert merge_quality(None, new) is new

    old["training"]["per_preset"]["a"] = {"train_s": 80.0, "train_dir": "/r/train/k1"}
    again = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 700})
    again["training"]["per_preset"]["a"] = {"train_s": 0.1, "train_dir": "/r/train/k1", "cached": True}
    assert merge_quality(old, again)["training"]["per_preset"]["a"]["train_s"] == 80.0  # when it was trained
    again["training"]["per_preset"]["a"] = {"train_s": 0.1, "train_dir": "/r/train/k2", "cached": True}
    assert merge_quality(old, again)["training"]["per_preset"]["a"]["train_s"] == 0.1  # no validation errors to compare
    old["val_results"]["a"] = again["val_results"]["a"]
    assert merge_quality(old, again)["training"]["per_preset"]["a"]["train_s"] == 80.0  # same errors: the same model
    other = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 690})
    other["training"]["per_preset"]["a"] = {"train_s": 0.1, "train_dir": "/r/train/k2", "cached": True}
    assert merge_quality(old, other)["training"]["per_preset"]["a"]["train_s"] == 0.1  # another model


@pytest.mark.parametrize("change", ["windows", "budget"])
def test_merge_refuses_results_measured_another_way(change):
    from benchmarks.model_results import BenchError, merge_quality

    old = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200})
    new = _quality(
        {"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200},
        **({"test_windows": 99} if change == "windows" else {"steps": 20}),
    )
    with pytest.raises(BenchError, match="cannot merge"):
        merge_quality(old, new)


def test_markdown_shows_merged_results_with_validation_column():
    from benchmarks.model_results import markdown, merge_quality

    old = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 700})
    q = merge_quality(
        old, _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "c": 600})
    )
    run = {
        "created": "t1",
        "parts": ["quality"],
        "presets": ["tutorial", "c"],
        "load_average_before": [1.0],
        "elapsed_s": 5,
    }
    r = bench_result(q, "default", runs=[{**run, "created": "t0"}, run])
    md = markdown(r)
    assert "| **c** |" in md and "| a |" in md and "val FDE @10" in md
    assert "Later runs merged into these results: t1 (quality; presets tutorial, c" in md


def test_cli_refuses_bad_requests_before_any_work(tmp_path, capsys, monkeypatch):
    from benchmarks.model import main
    from benchmarks.model_budget import ENV_PRESETS

    monkeypatch.setenv(ENV_PRESETS, "tutorial,not-a-preset")  # what `trajfm bench model` reads
    with pytest.raises(SystemExit) as exc:
        main(tmp_path / "model.json", ["--parts", "quality", "--root", str(tmp_path / "root")])
    assert exc.value.code == 2 and "'not-a-preset'" in capsys.readouterr().err
    monkeypatch.delenv(ENV_PRESETS)

    out = tmp_path / "model.json"
    for argv, text in (
        (["--parts", "quality", "--presets", "no-such-preset"], "unknown model preset"),
        (["--parts", "colour"], "unknown parts/datasets"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(out, argv + ["--root", str(tmp_path / "root")])
        assert exc.value.code == 2 and text in capsys.readouterr().err
    out.write_text('{"benchmark": "model", "budget": {"name": "default"}}')
    with pytest.raises(SystemExit) as exc:
        main(out, ["--budget", "quick", "--parts", "quality", "--root", str(tmp_path / "root")])
    assert exc.value.code == 2 and "holds budget 'default'" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()  # nothing was ingested or trained


def test_variants_are_reported_apart_and_never_win_the_preset_prize():
    from benchmarks.model_results import markdown, merge_quality, summarize

    q = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 800, "a-x": 600})
    q["variants"] = {"a-x": {"file": "/tmp/a-x.json", "comment": "a without x"}}
    q = summarize(q)
    assert q["best_preset"] == "a" and q["best_preset_by_val"] == "a"
    r = bench_result(q, "default")
    main_table, variants_table = markdown(r).split("Variants tried")
    assert "| a-x |" not in main_table and "| a-x |" in variants_table and "a without x" in variants_table
    adopted = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a-x": 600})
    q = merge_quality(q, {**adopted, "variants": {}})  # the same name, now a bundled preset
    assert q["variants"] == {} and q["best_preset"] == "a-x"


def test_train_stride_reaches_the_features_and_the_report(tmp_path, monkeypatch):
    import benchmarks.model as bm
    from benchmarks.model_budget import BUDGETS
    from benchmarks.model_results import BenchError, markdown, merge_quality, summarize

    seen = {}
    monkeypatch.setattr(bm, "run", lambda out, budget, *a: seen.setdefault("budget", budget))
    bm.main(tmp_path / "m.json", ["--budget", "quick", "--train-stride", "8", "--parts", "quality"])
    assert seen["budget"].train_stride == 8 and seen["budget"].threads == BUDGETS["quick"].threads
    assert seen["budget"].ais_steps == BUDGETS["quick"].ais_steps

    q = summarize(_quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200}))
    overlapped = {**q, "data": {**q["data"], "window_params": {"stride": 32, "train_stride": 8}}}
    r = bench_result(overlapped, runs=[])
    assert "training windows start every 8 points" in markdown(r)
    assert "training windows start every" not in markdown({**r, "quality": {"ais": q}})
    assert "Reused from the data root's cache" not in markdown(r)
    hit = {**q, "training": {**q["training"], "per_preset": {"tutorial": {"train_s": 0.1, "cached": True}}}}
    assert "the lookup): `tutorial`." in markdown({**r, "quality": {"ais": hit}})
    disjoint = {**q, "data": {**q["data"], "window_params": {"stride": 32}}}  # results from before the option
    with pytest.raises(BenchError, match="cannot merge"):  # another stride is another training set
        merge_quality(disjoint, overlapped)
    unset = {**q, "data": {**q["data"], "window_params": {"stride": 32, "train_stride": None}}}
    assert merge_quality(disjoint, unset)["data"]["window_params"]["stride"] == 32


def test_each_seed_trains_its_own_model_and_the_errors_are_their_mean(tmp_path):
    """On a real AIS day (the NY Harbor slice): two seeds, two models, the mean errors and each
    seed's kept, the report showing the spread; a one-seed file refuses to merge them."""
    import dataclasses

    import benchmarks.model as bm
    from benchmarks.model_budget import BUDGETS
    from benchmarks.model_results import BenchError, markdown, merge_quality, seed_std
    from trajfm.data.catalog import SMALL_SLICE, embedded_files

    budget = dataclasses.replace(BUDGETS["quick"], seeds=(0, 1), max_test_windows=32)
    q = bm.evaluate_dataset(
        "ais",
        [str(p) for p in embedded_files(SMALL_SLICE)],
        tmp_path / "root",
        6,
        budget,
        log=lambda msg: None,
        presets=["tutorial"],
    )
    tr = q["training"]["per_preset"]["tutorial"]
    assert len(set(tr["train_dirs"])) == 2 and tr["train_dir"] == tr["train_dirs"][0]
    assert q["training"]["train_overrides"]["seeds"] == [0, 1]
    runs = q["seed_results"]["test"]["tutorial"]
    assert len(runs) == 2 and runs[0]["fde_m@10"] != runs[1]["fde_m@10"]  # another seed, another model
    assert q["results"]["tutorial"]["fde_m@10"] == pytest.approx(
        (runs[0]["fde_m@10"] + runs[1]["fde_m@10"]) / 2, abs=0.01
    )
    assert q["val_results"]["tutorial"] == bm.mean_errors(q["seed_results"]["val"]["tutorial"])
    assert "constant_velocity" not in q["seed_results"]["test"]  # baselines do not train

    again = bm.evaluate_dataset(
        "ais",
        [str(p) for p in embedded_files(SMALL_SLICE)],
        tmp_path / "root",
        6,
        budget,
        log=lambda msg: None,
        presets=["tutorial"],
    )
    assert again["results"] == q["results"] and again["training"]["per_preset"]["tutorial"]["cached"]  # deterministic

    r = bench_result(q, runs=[])
    md = markdown(r)
    assert "mean over 2 training seeds (0, 1)" in md
    assert f"{q['results']['tutorial']['fde_m@10']:,.1f} ± {seed_std(runs, 'fde_m@10'):,.1f}" in md

    # each test window's error at 10 steps is kept (seeds: their mean), and they add up to the table
    we = q["window_errors"]
    assert we["metric"] == "fde_m@10" and set(we["errors"]) == {
        "constant_velocity",
        "linear_extrapolation",
        "kalman",
        "kalman_mle",
        "tutorial",
        "tutorial+blend",
    }
    for label, errs in we["errors"].items():
        assert len(errs) == q["data"]["test_windows_evaluated"] == 32
        assert np.mean(errs) == pytest.approx(q["results"][label]["fde_m@10"], abs=0.05)  # kept to 0.1 m
    boot = q["targets"]["bootstrap"]["best_vs_constant_velocity"]
    assert boot["windows"] == 32 and boot["ci_low"] <= q["targets"]["best_vs_constant_velocity"] <= boot["ci_high"]
    vs_tut = q["targets"]["bootstrap"]["best_vs_tutorial"]
    assert q["best_preset"] in ("tutorial", "tutorial+blend")  # the only preset, raw or with its never-worse rule
    assert vs_tut["ci_low"] <= q["targets"]["best_vs_tutorial"] <= vs_tut["ci_high"]
    assert "paired bootstrap, 2,000 draws" in md

    one_seed = {
        **q,
        "training": {
            **q["training"],
            "train_overrides": {k: v for k, v in q["training"]["train_overrides"].items() if k != "seeds"},
        },
    }  # a file from before --seeds
    with pytest.raises(BenchError, match="training budget differ.*seeds"):
        merge_quality(one_seed, q)
    assert merge_quality(q, q)["seed_results"] == q["seed_results"]


def test_cli_seeds_reach_the_budget(tmp_path, monkeypatch, capsys):
    import benchmarks.model as bm
    from benchmarks.model_budget import BUDGETS

    seen = {}
    monkeypatch.setattr(bm, "run", lambda out, budget, *a: seen.setdefault("budget", budget))
    bm.main(
        tmp_path / "m.json",
        ["--budget", "quick", "--seeds", "0,1,2", "--ema", "0.99", "--select", "fde", "--parts", "quality"],
    )
    assert seen["budget"].seeds == (0, 1, 2) and seen["budget"].ais_steps == BUDGETS["quick"].ais_steps
    assert seen["budget"].ema_decay == 0.99 and seen["budget"].select_by == "fde"
    for bad, text in (
        (["--seeds", "0,x"], "comma-separated integers"),
        (["--seeds", "1,1"], "repeats a seed"),
        (["--ema", "1"], "decay in [0, 1)"),
    ):
        with pytest.raises(SystemExit) as exc:
            bm.main(tmp_path / "m.json", bad)
        assert exc.value.code == 2 and text in capsys.readouterr().err


def test_weight_average_and_selection_reach_training_the_report_and_the_merge_check(tmp_path, monkeypatch):
    import dataclasses

    import benchmarks.model as bm
    from benchmarks.model_budget import BUDGETS
    from benchmarks.model_results import BenchError, markdown, merge_quality
    from trajfm.data.catalog import SMALL_SLICE, embedded_files

    budget = dataclasses.replace(BUDGETS["quick"], ema_decay=0.9, select_by="fde", max_test_windows=16)
    q = bm.evaluate_dataset(
        "ais",
        [str(p) for p in embedded_files(SMALL_SLICE)],
        tmp_path / "root",
        4,
        budget,
        log=lambda msg: None,
        presets=["tutorial"],
    )
    from trajfm.store import read_manifest

    manifest = read_manifest(q["training"]["per_preset"]["tutorial"]["train_dir"])
    assert manifest["train_config"]["ema_decay"] == 0.9 and manifest["train_config"]["select_by"] == "fde"
    assert manifest["final"]["best_val_fde_m"] > 0
    r = bench_result(q, runs=[])
    assert "epoch with the best validation FDE @10 kept; weights averaged, ema_decay 0.9)" in markdown(r)
    for option in ("ema_decay", "select_by"):
        plain = {
            **q,
            "training": {
                **q["training"],
                "train_overrides": {k: v for k, v in q["training"]["train_overrides"].items() if k != option},
            },
        }
        with pytest.raises(BenchError, match=f"training budget differ.*{option}"):
            merge_quality(plain, q)


def _heavy_tailed_errors(n: int, seed: int = 0) -> np.ndarray:
    """Forecast errors in metres shaped like the real ones: most windows tens of metres, a few km."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(mean=4.5, sigma=1.0, size=n)


def test_paired_bootstrap_brackets_the_improvement_and_narrows_with_more_windows():
    from benchmarks.model_results import paired_improvement

    ref = _heavy_tailed_errors(2000)
    noise = np.random.default_rng(1).normal(1.0, 0.2, size=ref.size).clip(0.1)
    model = 0.7 * ref * noise  # about 30% better, window by window, with noise
    big = paired_improvement(model, ref, (0.25, 0.35))
    assert big["ci_low"] < big["improvement"] < big["ci_high"]
    assert big["improvement"] == pytest.approx(1 - model.mean() / ref.mean(), abs=1e-4)
    assert 0.25 < big["ci_low"] and big["ci_high"] < 0.35  # 2,000 windows pin it down
    assert big["share_reaching"]["0.25"] == 1.0 and big["share_reaching"]["0.35"] == 0.0
    small = paired_improvement(model[:100], ref[:100], (0.25,))
    assert small["ci_high"] - small["ci_low"] > 2 * (big["ci_high"] - big["ci_low"])  # 100 windows do not
    assert paired_improvement(model[:100], ref[:100], (0.25,)) == small  # seeded: the same draws
    assert paired_improvement(model[:100], ref[:100], (0.25,), seed=1) != small

    # pairing matters: a model that errs where the reference errs is judged on the difference only
    same = paired_improvement(ref * 0.9, ref)
    assert same["ci_low"] == pytest.approx(0.1) and same["ci_high"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        paired_improvement(model[:10], ref[:11])
    with pytest.raises(ValueError, match="finite"):
        paired_improvement(np.array([1.0, np.nan]), np.array([1.0, 2.0]))


def test_merge_keeps_each_predictors_window_errors_and_the_report_shows_the_intervals():
    from benchmarks.model_results import markdown, merge_quality

    def with_windows(q: dict, scale: dict) -> dict:
        ref = _heavy_tailed_errors(400)
        q["window_errors"] = {
            "metric": "fde_m@10",
            "split": "test",
            "errors": {k: list(ref * f) for k, f in scale.items()},
        }
        return q

    old = with_windows(
        _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 700}),
        {"constant_velocity": 1.0, "linear_extrapolation": 0.9, "tutorial": 1.2, "a": 0.7},
    )
    new = with_windows(
        _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "c": 600}),
        {"constant_velocity": 1.0, "linear_extrapolation": 0.9, "tutorial": 1.2, "c": 0.6},
    )
    q = merge_quality(old, new)
    assert set(q["window_errors"]["errors"]) == {"constant_velocity", "linear_extrapolation", "tutorial", "a", "c"}
    boot = q["targets"]["bootstrap"]
    assert q["best_preset"] == "c" and boot["best_vs_constant_velocity"]["ci_low"] == pytest.approx(0.4)
    assert boot["best_vs_tutorial"]["improvement"] == pytest.approx(0.5)
    assert boot["best_vs_tutorial"]["share_reaching"] == {"0.2": 1.0}
    run = {
        "created": "t1",
        "parts": ["quality"],
        "presets": ["tutorial", "c"],
        "load_average_before": [1.0],
        "elapsed_s": 5,
    }
    r = bench_result(q, "default", runs=[run])
    assert "95% intervals of the improvement over the 400 test windows" in markdown(r)
    assert "vs `tutorial` 50.0 to 50.0% (target 20% reached in 100.0% of draws)" in markdown(r)

    # a file written before window errors were kept: no interval, and nothing breaks
    plain = _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "a": 700})
    assert (
        "bootstrap"
        not in merge_quality(
            plain, _quality({"constant_velocity": 1000, "linear_extrapolation": 900, "tutorial": 1200, "c": 600})
        )["targets"]
    )
    only_new = merge_quality(plain, new)  # the rerun's predictors have window errors, the old "a" none
    assert set(only_new["window_errors"]["errors"]) == {"constant_velocity", "linear_extrapolation", "tutorial", "c"}
    assert only_new["targets"]["bootstrap"]["best_vs_constant_velocity"]["improvement"] == pytest.approx(0.4)


def test_results_json_keeps_number_lists_on_one_line_and_round_trips():
    import json

    from benchmarks.model_results import dumps

    result = {
        "quality": {"ais": {"window_errors": {"errors": {"cv": [1.5, 2.0, -3.25e-05, 1200.0]}}}},
        "note": "a string [1,\n 2] stays as it is",
        "runs": [{"load": [0.5, 1]}, {"load": []}],
        "names": ["a", "b"],
    }
    text = dumps(result)
    assert json.loads(text) == result
    assert '"cv": [1.5, 2.0, -3.25e-05, 1200.0]' in text and '"load": [0.5, 1]' in text
    assert '"names": [\n' in text  # lists of strings keep the indented layout


def test_results_written_with_the_old_error_keys_read_with_the_one_key_scheme():
    from benchmarks.model_results import upgrade_keys

    old = {"results": {"tutorial": {"ade_10_m": 1.5, "fde_1_m": 2.0}}, "window_errors": {"metric": "fde_10_m"}}
    assert upgrade_keys(old) == {
        "results": {"tutorial": {"ade_m@10": 1.5, "fde_m@1": 2.0}},
        "window_errors": {"metric": "fde_m@10"},
    }
    assert upgrade_keys({"best_val_fde_m": 3.0, "preset": "tutorial"}) == {"best_val_fde_m": 3.0, "preset": "tutorial"}
