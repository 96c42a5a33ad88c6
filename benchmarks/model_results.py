"""The model benchmark's results (``benchmarks.model`` runs it): a dataset's summary with the
targets and their bootstrap intervals, merging a run into an earlier results file (same budget,
same windows), and the JSON and markdown table written.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import numpy as np

from benchmarks.model_budget import Budget

HORIZONS = (1, 5, 10)
BOOTSTRAP_RESAMPLES = 2000  # paired bootstrap over test windows for the targets' intervals
TARGET_VS_CONSTANT_VELOCITY = 0.25  # the targets: best preset's FDE at the longest horizon
TARGET_VS_TUTORIAL = 0.20
BASELINES = ("constant_velocity", "linear_extrapolation", "kalman", "kalman_mle")


def paired_improvement(
    errors: np.ndarray,
    reference: np.ndarray,
    targets: tuple[float, ...] = (),
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """How much better ``errors`` is than ``reference`` on the same windows, 1 - mean(errors) /
    mean(reference), with a paired percentile bootstrap over windows: ``resamples`` draws of the
    windows with replacement (the same draw for both, seeded), the ``level`` interval of the
    ratio, and for each target the share of draws where the improvement reaches it. The interval
    says how much the figure depends on which windows the test split happens to hold; it does not
    cover training seeds (their spread is reported apart)."""
    a, b = np.asarray(errors, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired errors need two 1-D arrays of the same length >= 2, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()) or b.sum() <= 0:
        raise ValueError("paired errors must be finite and the reference's must not all be zero")
    rng = np.random.default_rng(seed)
    ratios = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(a))  # bounded memory on large test splits
    for start in range(0, resamples, chunk):
        idx = rng.integers(0, len(a), size=(min(chunk, resamples - start), len(a)))
        ratios[start : start + len(idx)] = 1 - a[idx].sum(1) / np.maximum(b[idx].sum(1), 1e-12)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {
        "improvement": round(float(1 - a.mean() / b.mean()), 4),
        "ci_low": round(float(lo), 4),
        "ci_high": round(float(hi), 4),
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "windows": len(a),
        "share_reaching": {str(t): round(float((ratios >= t).mean()), 4) for t in targets},
    }


def seed_std(per_seed: list[dict], key: str) -> float:
    """Sample standard deviation of one error over training seeds."""
    return round(statistics.stdev(e[key] for e in per_seed), 2)


class BenchError(ValueError):
    """A request the benchmark refuses (unknown part, results that cannot be merged)."""


def summarize(q: dict) -> dict:
    """Adds ``best_preset`` (lowest test FDE at the longest horizon, the issue's target), the
    preset a reader would pick without seeing the test split (``best_preset_by_val``, when every
    preset has validation errors) and ``targets`` to one dataset's quality section."""
    key = f"fde_m@{max(HORIZONS)}"
    presets = [p for p in q["results"] if p not in BASELINES and p not in q.get("variants", {})]
    out = {k: v for k, v in q.items() if k not in ("best_preset", "best_preset_by_val", "targets")}
    if not presets:
        return out
    res = q["results"]
    best = min(presets, key=lambda p: res[p][key])
    val = q.get("val_results", {})
    cv, tut = res["constant_velocity"][key], res.get("tutorial", {}).get(key)
    out["best_preset"] = best
    out["best_preset_by_val"] = min(presets, key=lambda p: val[p][key]) if all(p in val for p in presets) else None
    out["targets"] = {
        "metric": key,
        "best_vs_constant_velocity": round(1 - res[best][key] / cv, 4) if cv else None,
        "best_vs_constant_velocity_target": TARGET_VS_CONSTANT_VELOCITY,
        "best_vs_tutorial": round(1 - res[best][key] / tut, 4) if tut else None,
        "best_vs_tutorial_target": TARGET_VS_TUTORIAL,
    }
    windows = (q.get("window_errors") or {}).get("errors", {})
    if windows.get("constant_velocity") and windows.get(best):
        intervals = {
            "best_vs_constant_velocity": paired_improvement(
                windows[best], windows["constant_velocity"], (TARGET_VS_CONSTANT_VELOCITY,)
            )
        }
        if windows.get("tutorial"):
            intervals["best_vs_tutorial"] = paired_improvement(
                windows[best], windows["tutorial"], (TARGET_VS_TUTORIAL,)
            )
        out["targets"]["bootstrap"] = intervals
    return out


def _unset_dropped(value):
    """A setting added later with default None (``train_stride``) equals its absence."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def merge_quality(old: dict | None, new: dict) -> dict:
    """One dataset's quality section with ``new``'s presets added to (or replacing) ``old``'s.

    Only results measured the same way merge: the same windows and the same training budget;
    otherwise a ``BenchError`` says what differs."""
    if not old or "results" not in old or "results" not in new:
        return new
    unset = {"seeds": [0], "ema_decay": 0.0, "select_by": "loss"}  # results from before these options
    for what, a, b in (
        ("windows", old["data"], new["data"]),
        (
            "training budget",
            {**unset, **old["training"]["train_overrides"]},
            {**unset, **new["training"]["train_overrides"]},
        ),
    ):
        keys = set(b) - {"seconds", "val_windows_evaluated"}
        diff = sorted(k for k in keys if k in a and _unset_dropped(a[k]) != _unset_dropped(b[k]))
        if diff:
            raise BenchError(
                f"cannot merge: the {what} differ ({', '.join(diff)}) from the existing results; "
                "use --fresh (trained models are cached under the data root) or another --out"
            )

    def merged(a: dict, b: dict) -> dict:
        both = {**a, **b}
        return {k: both[k] for k in [*BASELINES, *sorted(k for k in both if k not in BASELINES)] if k in both}

    per_preset = dict(old["training"]["per_preset"])
    for label, entry in new["training"]["per_preset"].items():
        before = per_preset.get(label, {})
        same_model = before.get("train_dir") == entry.get("train_dir") or (
            label in old["results"]
            and old["results"][label] == new["results"].get(label)
            and old.get("val_results", {}).get(label) == new["val_results"].get(label)
        )  # deterministic: the same model
        if entry.get("cached") and same_model and "train_s" in before:
            entry = {**entry, "train_s": before["train_s"]}  # the time of the run that trained it, not of the cache hit
        per_preset[label] = entry
    training = {**old["training"], "per_preset": per_preset}
    variants = {k: v for k, v in old.get("variants", {}).items() if k not in new["results"]}  # a rerun decides
    variants.update(new.get("variants", {}))
    seeds = {
        split: {k: v for k, v in old.get("seed_results", {}).get(split, {}).items() if k not in new["results"]}
        for split in ("test", "val")
    }  # a rerun decides, with its own seeds
    for split in seeds:
        seeds[split].update(new.get("seed_results", {}).get(split, {}))
    windows = {k: v for k, v in (old.get("window_errors") or {}).get("errors", {}).items() if k not in new["results"]}
    windows.update((new.get("window_errors") or {}).get("errors", {}))  # a rerun decides; older files have none
    window_errors = {**(new.get("window_errors") or old.get("window_errors") or {}), "errors": windows}
    extra = {}  # per-step errors and probabilistic scores: a rerun's predictors replace, others stay
    if "step_errors" in new:
        extra["step_errors"] = {
            k: ({**(old.get("step_errors") or {}).get(k, {}), **v} if isinstance(v, dict) else v)
            for k, v in new["step_errors"].items()
        }
    if "probabilistic" in new:
        extra["probabilistic"] = {
            **new["probabilistic"],
            "predictors": {
                **(old.get("probabilistic") or {}).get("predictors", {}),
                **new["probabilistic"]["predictors"],
            },
        }
    for key in ("baselines", "kalman"):
        if key in new:
            extra[key] = new[key]
    return summarize(
        {
            **old,
            **extra,
            **({"window_errors": window_errors} if windows else {}),
            "data": {**old["data"], **new["data"]},
            "training": training,
            "variants": variants,
            "results": merged(old["results"], new["results"]),
            "val_results": merged(old.get("val_results", {}), new["val_results"]),
            **({"seed_results": seeds} if any(seeds.values()) else {}),
        }
    )


_LEGACY_KEY = re.compile(r"^(ade|fde)_(\d+)_m$")  # results written before the one key scheme: fde_10_m


def upgrade_keys(value):
    """Results JSON with the error keys of ``trajfm.evaluate.metrics`` (``fde_m@10``): older
    files (``fde_10_m``) are read as if written today; anything else is left as it is."""
    if isinstance(value, dict):
        return {_LEGACY_KEY.sub(r"\1_m@\2", k): upgrade_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [upgrade_keys(v) for v in value]
    return _LEGACY_KEY.sub(r"\1_m@\2", value) if isinstance(value, str) else value


def previous_results(out: Path, budget: Budget) -> dict | None:
    """The results already in ``out`` to merge into (None if there are none)."""
    if not out.is_file():
        return None
    previous = upgrade_keys(json.loads(out.read_text()))
    if previous.get("benchmark") != "model":
        raise BenchError(f"{out} is not a model benchmark result; use --fresh or another --out")
    if previous["budget"]["name"] != budget.name:
        raise BenchError(
            f"{out} holds budget {previous['budget']['name']!r} results, not {budget.name!r}: "
            "use the same budget, --fresh, or another --out"
        )
    return previous


# a JSON array of numbers as ``json.dumps(indent=2)`` writes it: newlines only occur between
# tokens (never inside a JSON string), so this cannot match text within a string
_NUMBER_LIST = re.compile(r"\[\n\s*(-?[\d.eE+-]+(?:,\n\s*-?[\d.eE+-]+)*)\n\s*\]")


def dumps(result: dict) -> str:
    """``result`` as indented JSON with each list of numbers on one line (the per-window errors
    are thousands of numbers: one line per predictor, not one per number)."""
    return (
        _NUMBER_LIST.sub(
            lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", json.dumps(result, indent=2)
        )
        + "\n"
    )


# --- the report --------------------------------------------------------------------------------


def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# trajfm model benchmark",
        "",
        f"`trajfm bench model`, budget `{r['budget']['name']}`, {r['created']}; {m['cpu_count']} cores "
        f"({m['processor']}), torch {m['torch']} on {m['torch_threads']} thread(s); load average "
        f"{m['load_average_before']} before, {m.get('load_average_after')} after (a machine shared with other jobs: "
        f"absolute rates are lower bounds, ratios are measured interleaved). Peak RSS {m.get('peak_rss_mb')} MB; "
        f"{r.get('elapsed_s')} s in all.",
        "",
    ]
    later = r.get("runs", [])[1:]
    if later:
        lines += [
            "Later runs merged into these results: "
            + "; ".join(
                f"{x['created']} ({', '.join(x['parts'])}; "
                f"presets {x['presets'] if isinstance(x['presets'], str) else ', '.join(x['presets'])}; "
                f"load average {x['load_average_before']} before; {x.get('elapsed_s')} s)"
                for x in later
            )
            + ".",
            "",
        ]
    s = r.get("speed")
    if s:
        c = s["config"]
        lines += [
            f"## Training step: trajfm vs transformers GPT-2 ({s['preset']}: {c['n_layer']} layers, "
            f"{c['n_head']} heads, "
            f"d={c['d_model']}, {c['block_size']} points, dropout {c['dropout']}; {s['batch_windows']} windows = "
            f"{s['points_per_step']} real points per step; median of {s['timed_steps']} steps)",
            "",
            "| model | params | step (ms, median) | points/s | points/CPU-s | saved activations (MB) "
            "| weights+grads+AdamW (MB) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k in ("trajfm", "transformers"):
            if k in s:
                v = s[k]
                lines.append(
                    f"| {k} | {v['params']:,} | {v['step_ms_median']:.1f} | {v['points_per_s']:,.0f} | "
                    f"{v['points_per_cpu_s']:,.0f} | {v['saved_activation_mb']:.1f} | "
                    f"{v['weights_grads_adam_mb']:.2f} |"
                )
        lines += [
            "",
            f"**train_speed_ratio_vs_hf = {_fmt(s.get('train_speed_ratio_vs_hf'), 3)}** (wall; "
            f"{_fmt(s.get('train_speed_ratio_vs_hf_cpu_time'), 3)} on thread CPU time; target >= 1.0). {s['note']}.",
            "",
        ]
    g = r.get("generation")
    if g:
        lines += [
            f"## Generation: {g['steps']}-step rollout, KV cache vs recompute ({g['preset']}, "
            f"block_size {g['block_size']}, "
            f"{g['batch']} trajectories, {g['context_points']}-point context, median of {g['reps']})",
            "",
            "| | seconds | steps/s |",
            "|---|---:|---:|",
            f"| with KV cache | {g['with_cache_s']:.3f} | {g['with_cache_steps_per_s']:.1f} |",
            f"| without (recompute the prefix) | {g['without_cache_s']:.3f} | "
            f"{g['steps'] / g['without_cache_s']:.1f} |",
            "",
            f"**kv_cache_speedup = {g['kv_cache_speedup']:.1f}x** (target >= 5); cache {g['kv_cache_mb']} MB; largest "
            f"difference between the two paths' predictions {g['max_abs_diff_cache_vs_recompute']:.2e} (raw units).",
            "",
        ]
    for name, q in r.get("quality", {}).items():
        if "skipped" in q:
            lines += [f"## Forecast quality: {name}", "", f"Skipped: {q['skipped']}", ""]
            continue
        d, t = q["data"], q["training"]
        keys = [f"{a}_m@{k}" for k in HORIZONS for a in ("ade", "fde")]
        tg_key = f"fde_m@{max(HORIZONS)}"
        lines += [
            f"## Forecast quality: {name}, test split (latest 15% of the time span)",
            "",
            f"{d['test_windows_evaluated']:,} test windows, {d['context_len']} points of context; "
            "windows train/val/test "
            f"{d['windows']['train']:,}/{d['windows']['val']:,}/{d['windows']['test']:,}"
            f"{_stride_note(d.get('window_params') or {})}; each preset trained "
            f"{t['train_overrides']['max_steps']} steps of {t['train_overrides']['batch_size']} windows "
            f"({_kept_note(t['train_overrides'])}{_ema_note(t['train_overrides'].get('ema_decay'))})"
            f"{_seeds_note(t['train_overrides'].get('seeds') or [0])}. Errors in metres (great circle); "
            "ADE@k = mean over steps 1..k, FDE@k = at step k; "
            f"val = the same on {d.get('val_windows_evaluated', '-')} validation windows (the split to choose on).",
            "",
        ]
        header = [
            "| predictor | "
            + " | ".join(k.replace("_m", "").upper().replace("@", " @") for k in keys)
            + f" | val {tg_key.replace('_m', '').upper().replace('@', ' @')} | train s |",
            "|---|" + "---:|" * (len(keys) + 2),
        ]
        lines += header
        val, variants = q.get("val_results", {}), q.get("variants", {})
        by_seed = q.get("seed_results", {})

        def cell(pred: str, split: str, errs: dict, k: str, by_seed=by_seed, tg_key=tg_key) -> str:
            runs = by_seed.get(split, {}).get(pred)
            spread = f" ± {_fmt(seed_std(runs, k))}" if runs and k == tg_key else ""
            return _fmt(errs.get(k)) + spread

        def row(pred: str, errs: dict, t=t, q=q, keys=keys, val=val, tg_key=tg_key) -> str:
            tr = t["per_preset"].get(pred, {})
            label = f"**{pred}**" if pred == q.get("best_preset") else pred
            return (
                f"| {label} | "
                + " | ".join(cell(pred, "test", errs, k) for k in keys)
                + f" | {cell(pred, 'val', val.get(pred, {}), tg_key)} | {_fmt(tr.get('train_s'))} |"
            )

        lines += [row(pred, errs) for pred, errs in q["results"].items() if pred not in variants]
        reused = [p for p, tr in t["per_preset"].items() if tr.get("cached") and (tr.get("train_s") or 0) < 1.0]
        if reused:
            lines += [
                "",
                f"Reused from the data root's cache (trained by an earlier run on the same windows with the "
                f"same config and budget; train s is the lookup): {', '.join(f'`{p}`' for p in reused)}.",
            ]
        tg = q.get("targets")
        if tg:
            vs_cv, vs_tutorial = tg["best_vs_constant_velocity"], tg["best_vs_tutorial"]
            lines += [
                "",
                f"Best preset **{q['best_preset']}** on {tg['metric']}: "
                f"{_fmt(100 * vs_cv if vs_cv is not None else None)}% better than "
                f"constant velocity (target 25%), "
                f"{_fmt(100 * vs_tutorial if vs_tutorial is not None else None)}% better than `tutorial` "
                f"(target 20%). Chosen on the validation split instead: {q.get('best_preset_by_val') or '-'}.",
            ]
            if tg.get("bootstrap"):
                lines += ["", _bootstrap_note(tg["bootstrap"])]
        lines += _steps_and_scores_md(q)
        if variants:
            lines += [
                "",
                f"Variants tried ({name}; preset files outside the bundle, compared on the validation split, "
                "not candidates for the best preset):",
                "",
                *header,
            ]
            lines += [row(pred, q["results"][pred]) for pred in variants if pred in q["results"]]
            lines += [""] + [f"- `{pred}`: {v['comment']}" for pred, v in variants.items() if pred in q["results"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _steps_and_scores_md(q: dict) -> list[str]:
    """Markdown: the test error at every step 1..H, the never-worse check of each blended row,
    the Kalman filter's fitted noise and time, and the probabilistic scores."""
    st, variants = (q.get("step_errors") or {}).get("test"), q.get("variants", {})
    if not st:
        return []
    order = [p for p in BASELINES if p in st] + [
        p for p in st if p not in BASELINES and p.split("+")[0] not in variants
    ]
    H = len(st[order[0]])
    lines = [
        "",
        "Error (m) at each step ahead, test split (`<preset>+blend`: the preset with its per-step blend with "
        "constant velocity and error scale, both fitted on the val split, as the registered model forecasts; "
        "its val errors are on the split the rule was fitted on):",
        "",
        "| predictor | " + " | ".join(f"@{h}" for h in range(1, H + 1)) + " |",
        "|---|" + "---:|" * H,
    ]
    lines += [f"| {p} | " + " | ".join(_fmt(v) for v in st[p]) + " |" for p in order]
    cv = np.asarray(st.get("constant_velocity") or [np.nan] * H)
    worse = {p: [h + 1 for h, (a, b) in enumerate(zip(st[p], cv)) if a > b] for p in order if p.endswith("+blend")}
    if worse:
        lines += [
            "",
            "Steps where a blended preset is worse than constant velocity on test: "
            + "; ".join(f"`{p}` {', '.join(map(str, w)) if w else 'none'}" for p, w in worse.items())
            + ".",
        ]
    kf = q.get("kalman")
    if kf:
        lines += [
            "",
            f"Kalman filter: q = {kf['q_m2_s3']:.3g} m²/s³ (white-noise acceleration per axis), "
            f"r = {kf['r_m2']:.3g} m² "
            "(fix noise per axis), fitted "
            f"({'for its own forecast error' if kf.get('objective') == 'forecast' else 'by maximum likelihood'}) "
            f"on {kf['fit_windows']:,} training windows in "
            f"{kf['fit_s']} s; forecasting the test split took {kf['forecast_s'].get('test')} s."
            + (
                f" `kalman_mle`: q = {kf['likelihood_fit']['q_m2_s3']:.3g} m²/s³, "
                f"r = {kf['likelihood_fit']['r_m2']:.3g} m², "
                "by maximum likelihood (its covariance is the filter's error model below)."
                if kf.get("likelihood_fit")
                else ""
            ),
        ]
    pr = (q.get("probabilistic") or {}).get("predictors")
    if pr:
        lines += [
            "",
            "Probabilistic forecasts, test split: coverage of the 50/80/90% regions (share of windows whose true "
            "fix lies inside; mean over steps 1..H, and the 80% region at steps 1 and H) and CRPS in metres (mean over "
            "east/north and windows; lower is better), each predictor with its own error model "
            "(`probabilistic.error_models` in the JSON):",
            "",
            f"| predictor | cov 50% | cov 80% | cov 90% | cov 80% @1 | cov 80% @{H} | CRPS m (mean) | CRPS @1 "
            f"| CRPS @{H} |",
            "|---|" + "---:|" * 8,
        ]
        for p in [p for p in BASELINES if p in pr] + [p for p in pr if p not in BASELINES]:
            c, crps = pr[p]["coverage"], pr[p]["crps_m"]
            lines.append(
                f"| {p} | "
                + " | ".join(f"{100 * np.mean(c[lv]):.1f}%" for lv in ("50", "80", "90"))
                + f" | {100 * c['80'][0]:.1f}% | {100 * c['80'][-1]:.1f}% | {_fmt(float(np.mean(crps)))} | "
                f"{_fmt(crps[0])} | {_fmt(crps[-1])} |"
            )
    return lines


def _bootstrap_note(b: dict) -> str:
    """The targets' intervals in one sentence (``paired_improvement`` per reference)."""
    names = {"best_vs_constant_velocity": "constant velocity", "best_vs_tutorial": "`tutorial`"}
    parts = []
    for key, v in b.items():
        target, share = next(iter(v["share_reaching"].items()), (None, None))
        parts.append(
            f"vs {names.get(key, key)} {100 * v['ci_low']:.1f} to {100 * v['ci_high']:.1f}%"
            + (f" (target {100 * float(target):.0f}% reached in {100 * share:.1f}% of draws)" if target else "")
        )
    first = next(iter(b.values()))
    return (
        f"{100 * first['level']:.0f}% intervals of the improvement over the {first['windows']:,} test windows "
        f"(paired bootstrap, {first['resamples']:,} draws, seed {first['seed']}; the spread over which windows were "
        f"drawn, not over training seeds): " + "; ".join(parts) + "."
    )


def _kept_note(overrides: dict) -> str:
    if overrides.get("select_by") == "fde":
        return f"epoch with the best validation FDE @{overrides.get('select_horizon')} kept"
    return "best validation epoch kept"


def _ema_note(decay: float | None) -> str:
    return f"; weights averaged, ema_decay {decay}" if decay else ""


def _seeds_note(seeds: list[int]) -> str:
    if len(seeds) < 2:
        return ""
    return (
        f"; errors are the mean over {len(seeds)} training seeds ({', '.join(map(str, seeds))}), "
        f"± the standard deviation over them; train s is the sum"
    )


def _stride_note(params: dict) -> str:
    stride = params.get("train_stride")
    return f" (training windows start every {stride} points, overlapping)" if stride else ""
