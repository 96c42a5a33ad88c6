"""Model benchmark: training speed against ``transformers`` GPT-2, KV-cache generation, memory, and
forecast quality of every preset on held-out real data.

``trajfm bench model --out benchmarks/results/model.json`` (or ``main(out)``, or ``python -m
benchmarks.model --out FILE [--budget quick|default|long|full] [--root DIR] [--train-stride N]
[--seeds 0,1,2] [--ema DECAY] [--select loss|fde] [--parts speed,generation,quality] [--presets
NAME|FILE.json,...] [--datasets ais,geolife] [--fresh]``) writes the JSON results and a markdown
table beside it (same stem, ``.md``). The budget, parts and presets can also come from
``$TRAJFM_BENCH_BUDGET``, ``$TRAJFM_BENCH_PARTS`` and ``$TRAJFM_BENCH_PRESETS`` (``trajfm bench
model --out FILE`` takes the same arguments). The JSON is rewritten after each part, so a long run
leaves what it has. Unless ``--fresh``, a run MERGES into the file it writes: parts it does not run
are kept, and its presets are added to (or replace) those measured before on the same windows with
the same budget (anything else is refused); ``runs`` lists every run that contributed. ``tutorial``
always comes with a preset list, the baselines with every dataset.

**Speed** (one process, ``threads`` torch threads, interleaved so both contenders see the same
machine load; medians of ``speed_reps`` timed steps after ``speed_warmup`` untimed ones):

- ``train_speed_ratio_vs_hf``: one training step (``loss``, ``backward``, AdamW ``step``) of
  ``TrajGPT`` against the same model written with ``transformers.GPT2Model``: the same input
  projection, GPT-2 trunk (same d_model, layers, heads, learned positions, GELU-tanh, dropout,
  SDPA attention), head and masked next-point MSE, on the same batch (``B`` windows of
  ``block_size`` points, a quarter of them shorter, padded at the end, as real windows are).
  Ratio = trajfm points/s over transformers points/s (> 1: trajfm is faster). Wall time and
  thread CPU time both reported (CPU time is less sensitive to other jobs on the machine).
- ``kv_cache_speedup``: ``trajfm.model.generate.Rollout`` of ``GEN_STEPS`` = 64 steps from a
  32-point context, ``use_cache=True`` against ``False`` (recomputing the whole prefix each step),
  with ``block_size`` 128 so the cache holds the whole rollout.
- Memory: bytes the autograd graph saves during one training step (the activations a backward
  needs, measured with ``saved_tensors_hooks``, shared storages counted once), parameter +
  gradient + AdamW state bytes, the KV cache size, and the peak resident memory of the process.

**Quality**: the real pipeline stages as library calls into a data root (default
``$TMPDIR/trajfm-bench-model``; stages are cached there, so a rerun reuses them):
``ingest`` of the embedded AIS files -> ``preprocess(scheduler="sync")`` -> ``make_features``
(32-point windows, chronological 70/15/15 split) -> ``run_training`` per preset -> forecasts on
the **test split** (the latest 15% of the time span), ``CONTEXT_LEN`` = 20 points of context,
``HORIZONS`` up to 10 steps ahead, ADE (mean error over steps 1..k) and FDE (error at step k) in
metres (great-circle), for every preset of ``trajfm.model.config.list_presets()``, constant
velocity (``trajfm.evaluate.forecast.constant_velocity``) and ``linear_extrapolation`` (below),
all on exactly the same windows; the same errors on the validation split (``val_results``,
``best_preset_by_val``) are the ones to choose variants on. The same for the shared GeoLife files
(``../shared/data/geolife``) when they and the ``geolife`` reader exist; otherwise a note says
why not. The training budget (``Budget``: optimizer steps of ``batch_size`` windows per preset
and dataset, AdamW lr 1e-3 with warmup then cosine, best validation epoch kept) is modest so the
default run fits about 20 minutes on 2 shared CPU cores; ``long`` trains 4x longer (3.6
AIS epochs), ``full`` ~10x. ``--seeds 0,1,2`` trains each preset once per seed and reports the
mean errors (each seed's under ``seed_results``, the spread in the table); ``--ema 0.999`` trains
every preset with a weight average (``TrainConfig.ema_decay``), validated and forecast with it;
``--select fde`` keeps each preset's epoch with the lowest validation FDE at the longest horizon
(``TrainConfig.select_by``) instead of the lowest validation loss. Results with other seeds,
average or selection never merge.

Each test window's error at the longest horizon is kept per predictor (``window_errors``; with
seeds, the mean over seeds window by window), so the targets come with **intervals**: a paired
bootstrap over the test windows (``paired_improvement``: ``BOOTSTRAP_RESAMPLES`` seeded draws,
95% percentile interval of 1 - best/reference, and the share of draws reaching each target).
They say how much a figure depends on which windows the test split holds; the seed spread says
how much it depends on training.

This module runs the parts and measures quality; budgets and options: ``benchmarks.model_budget``,
speed: ``model_speed``, summaries, merge, JSON and markdown: ``model_results``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks import run_as_script
from benchmarks.model_budget import BUDGETS, DATASETS, DEFAULT_ROOT, PARTS, Budget, csv_list, parse_options
from benchmarks.model_results import HORIZONS, BenchError, dumps, markdown, merge_quality, previous_results, summarize
from benchmarks.model_speed import measure_generation, measure_train_speed
from trajfm.evaluate.baselines import LINEAR_FIT_POINTS, linear_extrapolation

CONTEXT_LEN = 20  # points of context before the forecast


# --- quality: the real pipeline, every preset, baselines -----------------------------------------


def shared_geolife_dir() -> Path:
    """``../shared/data/geolife`` next to the project checkout (where the tests look too)."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geolife"


def prepare_features(sources: list, root: Path, train_stride: int | None = None) -> tuple[Path, dict]:
    """ingest -> preprocess (sync) -> features; returns the features directory and stage info.
    ``train_stride`` overlaps the training windows (validation and test windows stay the same)."""
    from trajfm.data.ingest import ingest
    from trajfm.data.preprocess import preprocess
    from trajfm.features.windows import WindowParams, make_features
    from trajfm.store import read_manifest

    t0 = time.perf_counter()
    ingest_dir = ingest(sources, root=root)
    processed = preprocess(ingest_dir, root=root, scheduler="sync")
    features = make_features(processed, root=root, params=WindowParams(train_stride=train_stride))
    m = read_manifest(features)
    pre = read_manifest(processed)
    info = {
        "points_ingested": read_manifest(ingest_dir).get("rows_kept"),
        "points_resampled": pre.get("rows_out"),
        "trajectories": pre.get("n_trajectories"),
        "windows": m["windows"],
        "window_params": m["params"],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return features, info


def forecast_errors(lon: np.ndarray, lat: np.ndarray, true_lon: np.ndarray, true_lat: np.ndarray) -> dict:
    """``ade_m@k`` / ``fde_m@k`` in metres at each of ``HORIZONS`` from (N, H) forecasts and truth
    (``trajfm.evaluate.metrics.forecast_errors``, to 0.01 m)."""
    return errors_and_final(lon, lat, true_lon, true_lat)[0]


def errors_and_final(
    lon: np.ndarray, lat: np.ndarray, true_lon: np.ndarray, true_lat: np.ndarray
) -> tuple[dict, np.ndarray]:
    """``forecast_errors`` and each window's error in metres at the last step (the target
    metric, window by window), from one distance computation."""
    from trajfm.evaluate.metrics import distance_errors_m, horizon_errors

    err = distance_errors_m(lon, lat, true_lon, true_lat)  # (N, H) metres
    return {k: round(v, 2) for k, v in horizon_errors(err, HORIZONS).items()}, err[:, -1]


# (the paired bootstrap over these errors and their spread over seeds: benchmarks.model_results)


def mean_errors(per_seed: list[dict]) -> dict:
    """The errors of several training seeds averaged key by key (one seed: its own errors)."""
    return {k: round(statistics.fmean(e[k] for e in per_seed), 2) for k in per_seed[0]}


def _split_windows(features: Path, split: str, budget: Budget):
    """The ``forecastable`` windows of one split (capped by the budget) and their true future."""
    from trajfm.evaluate.forecast import forecastable
    from trajfm.features.windows import WindowSet

    ws = WindowSet.load(features / f"{split}.npz")
    horizon = max(HORIZONS)
    sel = forecastable(ws, CONTEXT_LEN, horizon)
    if budget.max_test_windows is not None:
        sel = sel[: budget.max_test_windows]
    ws = ws.subset(sel)
    truth = slice(CONTEXT_LEN, CONTEXT_LEN + horizon)
    return ws, ws.lon[:, truth], ws.lat[:, truth]


def preset_label(preset: str) -> str:
    """The name a preset's results go under: the preset name, or a ``.json`` path's stem."""
    return Path(preset).stem if preset.endswith(".json") else preset


def is_variant(preset: str) -> bool:
    """A preset FILE outside the bundle: an experiment. Its errors are reported apart from the
    bundled presets' and never compete for ``best_preset`` (variants are chosen on validation)."""
    return preset.endswith(".json") and Path(preset).is_file()


def evaluate_dataset(
    name: str, sources: list, root: Path, steps: int, budget: Budget, log, presets: list[str] | None = None
) -> dict:
    """``presets`` (default: all of ``list_presets()``; names or ``.json`` paths) each trained
    ``steps`` steps on one dataset, and the baselines, forecast on its test split; the validation
    split's errors come with them (``val_results``: the split to choose variants on). Each preset
    trains once per seed of ``budget.seeds``; its errors are the mean over seeds, and with more
    than one seed ``seed_results`` keeps each seed's (per split, in seed order)."""
    from trajfm.evaluate.forecast import constant_velocity, evaluate_forecast, forecastable, rollout
    from trajfm.evaluate.kalman import FIT_MAX_WINDOWS, fit_kalman, kalman_forecast
    from trajfm.features.windows import WindowSet
    from trajfm.model import list_presets, load_model
    from trajfm.store import read_manifest
    from trajfm.train import TrainConfig, planned_steps, run_training

    features, info = prepare_features(sources, root, budget.train_stride)
    log(f"{name}: features {info['windows']} in {info['seconds']} s")
    horizon = max(HORIZONS)
    splits = {split: _split_windows(features, split, budget) for split in ("test", "val")}
    n_train = info["windows"]["train"]
    steps_per_epoch = math.ceil(n_train / budget.batch_size)
    train_overrides = {
        "epochs": math.ceil(steps / steps_per_epoch),
        "max_steps": steps,
        "batch_size": budget.batch_size,
        "warmup_steps": min(100, max(steps // 10, 1)),
        "device": "cpu",
        "progress": False,
        **({"ema_decay": budget.ema_decay} if budget.ema_decay else {}),
        **(
            {"select_by": "fde", "select_context": CONTEXT_LEN, "select_horizon": horizon}
            if budget.select_by == "fde"
            else {}
        ),
    }  # + "seed", one of budget.seeds
    results: dict = {"test": {}, "val": {}}
    per_window: dict = {}  # test windows' errors at the longest horizon, per predictor (seeds: the mean)
    steps: dict = {"test": {}, "val": {}}  # mean error (m) at each step 1..horizon, per predictor
    probabilistic: dict = {}  # test split: coverage and CRPS per step of each predictor's own error model
    train_ws = WindowSet.load(features / "train.npz")
    t0 = time.perf_counter()
    kalman_params = fit_kalman(train_ws, CONTEXT_LEN, horizon)  # tuned for its own forecasts: the point reference
    kalman_fit_s = time.perf_counter() - t0
    kalman_mle = fit_kalman(train_ws, CONTEXT_LEN, horizon, objective="likelihood")  # the textbook fit: its covariance
    kalman_forecast_s = {}
    cv_radius = {"train": _cv_radius(train_ws, horizon), "val": _cv_radius(splits["val"][0], horizon)}
    for split, (ws, true_lon, true_lat) in splits.items():
        t0 = time.perf_counter()
        k_lon, k_lat, _ = kalman_forecast(ws, CONTEXT_LEN, horizon, kalman_params)
        kalman_forecast_s[split] = round(time.perf_counter() - t0, 3)
        l_lon, l_lat, _, l_cov = kalman_forecast(ws, CONTEXT_LEN, horizon, kalman_mle, with_cov=True)
        c_lon, c_lat, _ = constant_velocity(ws, CONTEXT_LEN, horizon)
        for label, (lon, lat) in (
            ("constant_velocity", (c_lon, c_lat)),
            ("linear_extrapolation", linear_extrapolation(ws, CONTEXT_LEN, horizon)[:2]),
            ("kalman", (k_lon, k_lat)),
            ("kalman_mle", (l_lon, l_lat)),
        ):
            results[split][label], final = errors_and_final(lon, lat, true_lon, true_lat)
            steps[split][label] = step_errors(lon, lat, true_lon, true_lat)
            if split == "test":
                per_window[label] = final
        if split == "test":
            probabilistic["constant_velocity"] = _radial(c_lon, c_lat, true_lon, true_lat, cv_radius["train"])
            probabilistic["constant_velocity (val fit)"] = _radial(c_lon, c_lat, true_lon, true_lat, cv_radius["val"])
            probabilistic["kalman_mle"] = _scores(l_lon, l_lat, true_lon, true_lat, l_cov)
    training, by_seed = {}, {"test": {}, "val": {}}
    for preset in presets or list_presets():
        label = preset_label(preset)
        runs = []
        for seed in budget.seeds:
            t0 = time.perf_counter()
            epochs_run = []
            train_dir = run_training(
                features,
                root=root,
                preset=preset,
                train_overrides={**train_overrides, "seed": seed},
                on_epoch=lambda record, fraction, epochs_run=epochs_run: epochs_run.append(record["epoch"]),
                forecast_evaluator=evaluate_forecast,  # for select_by "fde"
            )
            train_s = time.perf_counter() - t0
            model = load_model(train_dir / "model.pt")
            t1 = time.perf_counter()
            errors, windows, positions = {}, None, {}
            for split, (ws, true_lon, true_lat) in splits.items():
                lon, lat, _ = rollout(model, ws, CONTEXT_LEN, horizon)
                errors[split], final = errors_and_final(lon, lat, true_lon, true_lat)
                positions[split] = (lon, lat)
                if split == "test":
                    windows = final
            forecast_s = time.perf_counter() - t1
            blended = _blended(positions, splits)  # the never-worse rule, fitted on val (trajfm.model.blend)
            runs.append(
                {
                    "seed": seed,
                    "train_dir": train_dir,
                    "train_s": train_s,
                    "cached": not epochs_run,
                    "forecast_s": forecast_s,
                    "errors": errors,
                    "windows": windows,
                    "steps": {split: step_errors(*positions[split], *splits[split][1:]) for split in splits},
                    "blended": blended,
                }
            )
            log(
                f"{name}: {label} seed {seed} test {errors['test']} val fde@{horizon} "
                f"{errors['val'].get(f'fde_m@{horizon}')} ({train_s:.0f} s training)"
            )
        per_window[label] = np.mean([r["windows"] for r in runs], axis=0)
        per_window[f"{label}+blend"] = np.mean([r["blended"]["windows"] for r in runs], axis=0)
        for split in results:
            results[split][label] = mean_errors([r["errors"][split] for r in runs])
            results[split][f"{label}+blend"] = mean_errors([r["blended"]["errors"][split] for r in runs])
            steps[split][label] = _mean_lists([r["steps"][split] for r in runs])
            steps[split][f"{label}+blend"] = _mean_lists([r["blended"]["steps"][split] for r in runs])
            if len(runs) > 1:
                by_seed[split][label] = [r["errors"][split] for r in runs]
                by_seed[split][f"{label}+blend"] = [r["blended"]["errors"][split] for r in runs]
        probabilistic[f"{label}+blend"] = {
            "coverage": {
                lv: _mean_lists([r["blended"]["scores"]["coverage"][lv] for r in runs])
                for lv in runs[0]["blended"]["scores"]["coverage"]
            },
            "crps_m": _mean_lists([r["blended"]["scores"]["crps_m"] for r in runs]),
        }
        blend_rules = {f"seed {r['seed']}": r["blended"]["rule"] for r in runs}
        manifest = read_manifest(runs[0]["train_dir"])
        final = manifest["final"]
        training[label] = {
            "steps": final["step"],
            "epochs": final["epoch"],
            "best_val_loss": final["best_val_loss"],
            "params": final["n_params"],
            "train_s": round(sum(r["train_s"] for r in runs), 1),
            "forecast_s": round(sum(r["forecast_s"] for r in runs), 1),
            "train_dir": str(runs[0]["train_dir"]),
            "cached": all(r["cached"] for r in runs),  # finished stages of an earlier run
            "config": manifest.get("model_config"),
            "blend": blend_rules,
            **({"train_dirs": [str(r["train_dir"]) for r in runs]} if len(runs) > 1 else {}),
        }
    return summarize(
        {
            "data": {
                **info,
                "test_windows_evaluated": len(splits["test"][0]),
                "val_windows_evaluated": len(splits["val"][0]),
                "context_len": CONTEXT_LEN,
                "horizons": list(HORIZONS),
            },
            "baselines": {
                "constant_velocity": "repeat the last displacement and time gap "
                "(trajfm.evaluate.forecast.constant_velocity)",
                "linear_extrapolation": f"least-squares velocity over the last {LINEAR_FIT_POINTS} fixes, "
                "last time gap repeated",
                "kalman": "constant-velocity Kalman filter (Stone Soup models, trajfm.evaluate.kalman), "
                "noise tuned on the train split for the lowest error of its own forecasts",
                "kalman_mle": "the same filter with its noise fitted on the train split by maximum likelihood",
            },
            "kalman": {
                **kalman_params.to_dict(),
                "objective": "forecast",
                "likelihood_fit": kalman_mle.to_dict(),
                "fit_s": round(kalman_fit_s, 2),
                "forecast_s": kalman_forecast_s,
                "fit_windows": int(min(len(forecastable(train_ws, CONTEXT_LEN, horizon)), FIT_MAX_WINDOWS)),
            },
            "step_errors": {
                "metric": "mean error (m) at each step 1..horizon",
                **{k: {p: [round(v, 2) for v in e] for p, e in d.items()} for k, d in steps.items()},
            },
            "probabilistic": {
                "split": "test",
                "levels": [50, 80, 90],
                "error_models": {
                    "constant_velocity": "radial error quantiles per step fitted on the train split "
                    "(trajfm.model.blend.fit_radius)",
                    "constant_velocity (val fit)": "the same fitted on the val split, as the model's",
                    "kalman_mle": "the likelihood-fitted filter's own predicted Gaussian covariance (state + fix "
                    "noise); the forecast-tuned filter's covariance is no error model "
                    "(its noise is chosen for its mean)",
                    "<preset>+blend": "radial error quantiles per step of the blended forecast fitted on the val split "
                    "(the registered model's)",
                },
                "predictors": probabilistic,
            },
            "training": {
                "train_overrides": {
                    **{k: v for k, v in train_overrides.items() if k != "progress"},
                    "seeds": list(budget.seeds),
                },
                "planned_steps": planned_steps(n_train, TrainConfig(**train_overrides)),
                "per_preset": training,
            },
            "results": results["test"],
            "val_results": results["val"],
            **({"seed_results": by_seed} if len(budget.seeds) > 1 else {}),
            "window_errors": {
                "metric": f"fde_m@{horizon}",
                "split": "test",
                "errors": {k: [round(float(e), 1) for e in v] for k, v in per_window.items()},
            },
            "variants": {
                preset_label(p): {
                    "file": str(Path(p).resolve()),
                    "comment": json.loads(Path(p).read_text()).get("_comment", ""),
                }
                for p in presets or []
                if is_variant(p)
            },
        }
    )


# --- per-step errors, probabilistic scores, the never-worse blend -------------------------------


def step_errors(lon, lat, true_lon, true_lat) -> list[float]:
    """Mean great-circle error (m) at each forecast step of (N, H) forecasts."""
    from trajfm.evaluate.metrics import step_errors_m

    return step_errors_m(lon, lat, true_lon, true_lat)


def _mean_lists(lists: list[list[float]]) -> list[float]:
    return np.mean(np.asarray(lists, np.float64), axis=0).round(4).tolist()


def _scores(lon, lat, true_lon, true_lat, cov) -> dict:
    from trajfm.evaluate.scores import error_vectors_m, probabilistic_scores

    return probabilistic_scores(error_vectors_m(lon, lat, true_lon, true_lat), cov)


def _cv_radius(ws, horizon: int):
    """Constant velocity's own error model: per-step radial error quantiles fitted on ``ws``."""
    from trajfm.evaluate.forecast import constant_velocity, forecastable
    from trajfm.geo import haversine_m
    from trajfm.model.blend import fit_radius

    sel = forecastable(ws, CONTEXT_LEN, horizon)
    lon, lat, _ = constant_velocity(ws, CONTEXT_LEN, horizon)
    truth = slice(CONTEXT_LEN, CONTEXT_LEN + horizon)
    return fit_radius(haversine_m(lon, lat, ws.lon[sel, truth], ws.lat[sel, truth]))


def _radial(lon, lat, true_lon, true_lat, table) -> dict:
    from trajfm.evaluate.scores import error_vectors_m, radial_scores

    return radial_scores(error_vectors_m(lon, lat, true_lon, true_lat), table)


def _blended(positions: dict, splits: dict) -> dict:
    """A preset's forecasts under the never-worse rule (``trajfm.model.blend``, as
    ``trajfm.evaluate.calibrate.calibrate_model`` fits it): per-step weights against constant
    velocity and the error scale, both fitted on the val split, applied to both splits."""
    from trajfm.evaluate.forecast import constant_velocity
    from trajfm.geo import haversine_m
    from trajfm.model.blend import fit_blend, fit_radius, mix

    horizon = max(HORIZONS)
    out: dict = {"errors": {}, "steps": {}}
    rule = None
    for split in ("val", "test"):  # val first: the rule is chosen there
        ws, true_lon, true_lat = splits[split]
        m_lon, m_lat = positions[split]
        c_lon, c_lat, _ = constant_velocity(ws, CONTEXT_LEN, horizon)
        last_lon, last_lat = ws.lon[:, CONTEXT_LEN - 1], ws.lat[:, CONTEXT_LEN - 1]
        if rule is None:
            w = fit_blend(last_lon, last_lat, m_lon, m_lat, c_lon, c_lat, true_lon, true_lat)
            b_lon, b_lat = mix(np.asarray(w), last_lon, last_lat, m_lon, m_lat, c_lon, c_lat)
            rule = {
                "weights": list(w),
                "radius_m": [
                    [round(v, 2) for v in row] for row in fit_radius(haversine_m(b_lon, b_lat, true_lon, true_lat))
                ],
            }
        b_lon, b_lat = mix(np.asarray(rule["weights"]), last_lon, last_lat, m_lon, m_lat, c_lon, c_lat)
        out["errors"][split], final = errors_and_final(b_lon, b_lat, true_lon, true_lat)
        out["steps"][split] = step_errors(b_lon, b_lat, true_lon, true_lat)
        if split == "test":
            out["windows"] = final
            out["scores"] = _radial(b_lon, b_lat, true_lon, true_lat, rule["radius_m"])
    out["rule"] = rule
    return out


# --- the whole run -----------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _quality(name: str, budget: Budget, root: Path, log, presets: list[str] | None) -> dict:
    from trajfm.data.catalog import embedded_files
    from trajfm.data.readers import READERS

    if name == "ais":
        return evaluate_dataset("ais", [str(p) for p in embedded_files()], root, budget.ais_steps, budget, log, presets)
    geolife = shared_geolife_dir()
    if "geolife" not in READERS:
        return {"skipped": "no 'geolife' reader in trajfm.data.readers.READERS"}
    if not geolife.is_dir():
        return {"skipped": f"{geolife} not found (the shared GeoLife files are not on this machine)"}
    return evaluate_dataset("geolife", [str(geolife)], root, budget.geolife_steps, budget, log, presets)


def run(
    out: Path,
    budget: Budget | str = "default",
    root: str | Path | None = None,
    parts: tuple[str, ...] = PARTS,
    presets: list[str] | None = None,
    datasets: tuple[str, ...] = DATASETS,
    fresh: bool = False,
) -> dict:
    """Run the benchmark parts, writing ``out`` (JSON) and ``out.with_suffix('.md')`` after each.

    ``presets`` (names or ``.json`` paths; default all bundled presets) limits the quality part;
    ``tutorial`` always comes with them (the targets are relative to it). Unless ``fresh``, the
    results already in ``out`` are kept: parts not run stay, and a quality run adds its presets
    to the ones measured before on the same windows with the same budget (``merge_quality``).
    """
    budget = BUDGETS[budget] if isinstance(budget, str) else budget
    unknown = sorted(set(parts) - set(PARTS)) + sorted(set(datasets) - set(DATASETS))
    if unknown:
        raise BenchError(f"unknown parts/datasets {unknown}; parts: {PARTS}, datasets: {DATASETS}")
    if presets is not None:
        from trajfm.model.config import load_preset

        for p in presets:
            try:
                load_preset(p)  # an unknown name fails now, not after an hour of training
            except ValueError as exc:
                raise BenchError(str(exc)) from exc
        presets = ["tutorial", *[p for p in presets if p != "tutorial"]]
    root = Path(root) if root else DEFAULT_ROOT
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = None if fresh else previous_results(out, budget)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(budget.threads)
    started = time.perf_counter()
    this_run = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parts": list(parts),
        "datasets": list(datasets),
        "presets": presets or "all",
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
    }
    result: dict = previous or {
        "benchmark": "model",
        "created": this_run["created"],
        "budget": asdict(budget),
        "data_root": str(root),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "torch_threads": budget.threads,
            "load_average_before": this_run["load_average_before"],
        },
    }
    result.setdefault("runs", []).append(this_run)

    def log(msg: str) -> None:
        print(f"[bench model {time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    def save() -> None:
        this_run["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        this_run["peak_rss_mb"] = _peak_rss_mb()
        this_run["elapsed_s"] = round(time.perf_counter() - started, 1)
        if previous is None:  # the first run's machine line
            result["machine"]["load_average_after"] = this_run["load_average_after"]
            result["machine"]["peak_rss_mb"] = this_run["peak_rss_mb"]
            result["elapsed_s"] = this_run["elapsed_s"]
        out.write_text(dumps(result))
        out.with_suffix(".md").write_text(markdown(result))

    try:
        if "speed" in parts:
            result["speed"] = measure_train_speed(budget)
            result["train_speed_ratio_vs_hf"] = result["speed"].get("train_speed_ratio_vs_hf")
            log(f"training speed: {result['speed']}")
            save()
        if "generation" in parts:
            result["generation"] = measure_generation(budget)
            result["kv_cache_speedup"] = result["generation"]["kv_cache_speedup"]
            log(f"generation: {result['generation']}")
            save()
        if "quality" in parts:
            quality = result.setdefault("quality", {})
            for name in datasets:
                quality[name] = merge_quality(quality.get(name), _quality(name, budget, root, log, presets))
                save()
    finally:
        torch.set_num_threads(threads_before)
    save()
    log(f"done: {out}")
    return result


def main(out: Path, argv: list[str] | None = None) -> int:
    parser, args, budget = parse_options(argv, description=__doc__.split("\n\n")[0])
    try:
        run(
            args.out or out,
            budget,
            args.root,
            tuple(csv_list(args.parts)),
            csv_list(args.presets) or None,
            tuple(csv_list(args.datasets)),
            args.fresh,
        )
    except BenchError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_as_script(main, "python -m benchmarks.model"))
