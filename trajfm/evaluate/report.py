"""``trajfm report``: a markdown report with PNG plots from evaluation results.

    trajfm report --results RESULTS.json [MORE.json ...] --out DIR [--mlflow] [--data-root DIR]

Design: ``evaluate_model`` (``trajfm.evaluate.suite``) saves, next to its JSON, an ``.npz`` of
what the plots need (``collect_plot_data``: a few example windows with their forecasts and
samples, per-horizon errors, the mixture head's calibration, motion statistics of real and
generated continuations), so a report never reloads the model or re-reads the data and always
shows exactly the evaluated windows. ``DIR/report.md`` then gets, per results file:

- the metrics table (metric rows x model / baseline columns) and the row accounting;
- ``trajectories``: context, truth, the model's forecast (and, for a mixture head, sampled
  futures: its uncertainty) and constant velocity, in metres east/north of the last context fix;
- ``error_vs_horizon``: mean great-circle error per step ahead, model vs constant velocity;
- ``calibration`` (mixture head): fraction of true points inside the predicted x% region vs x,
  the region being the disc around the forecast holding x% of the sampled futures;
- ``generation``: histograms of step length, speed and turn angle, real vs generated (sampled)
  continuations of the same contexts.

A transfer results file (``trajfm evaluate --protocol``) becomes its mean ± std table and a plot
of held-out ADE vs horizon per predictor (zero-shot, fine-tuned, baselines). With
``--mlflow`` the report directory is logged as artifacts of a run (``log_report``).
Plots use matplotlib's ``Figure`` directly (Agg canvas, no pyplot, no global backend change).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np

EXAMPLES = 6  # example windows drawn
SAMPLES = 16  # sampled futures per window (mixture head)
MAX_WINDOWS = 256  # windows used for per-horizon errors, calibration and distributions
LEVELS = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
MOTION = {"step_m": "step length (m)", "speed_mps": "speed (m/s)", "turn_deg": "turn angle (deg)"}


def plot_data_path(results_json: Path) -> Path:
    """Where the plot data of a results file lives: ``<stem>.plots.npz`` beside it."""
    results_json = Path(results_json)
    return results_json.with_name(f"{results_json.stem}.plots.npz")


# ---------------------------------------------------------------------------------------------
# What the plots need (computed once, at evaluation time)


def collect_plot_data(
    model,
    ws,
    *,
    seed: int = 0,
    context_len: int = 20,
    horizon: int = 10,
    n_examples: int = EXAMPLES,
    n_samples: int = SAMPLES,
    max_windows: int = MAX_WINDOWS,
) -> dict:
    """Arrays for the report from the forecastable windows of ``ws``: degrees, UTC ns, metres.
    Deterministic for a given ``seed``.

    The error-vs-horizon curves (``err_model_m``, ``err_constant_velocity_m``, ``n_windows``) use
    every forecastable window, the same rollout and distance as the forecast task's table
    (``trajfm.evaluate.forecast.forecast_task`` with the same ``context_len`` and longest
    horizon), so the curve at step h is the table's ``fde_m@h`` and the window counts agree.
    Examples, sampled futures, calibration and distributions use at most ``max_windows`` evenly
    spaced windows (``n_subset_windows``)."""
    import torch

    from trajfm.evaluate.forecast import constant_velocity, forecastable, rollout
    from trajfm.evaluate.metrics import step_errors_m

    sel = forecastable(ws, context_len, horizon)
    if len(sel) == 0:
        return {"n_windows": np.array(0), "context_len": np.array(context_len), "horizon": np.array(horizon)}
    truth = slice(context_len, context_len + horizon)
    all_lon, all_lat = ws.lon[sel, truth], ws.lat[sel, truth]
    model_all, cv_all = rollout(model, ws, context_len, horizon), constant_velocity(ws, context_len, horizon)
    idx = np.unique(np.linspace(0, len(sel) - 1, min(max_windows, len(sel))).round().astype(int))
    pick = sel[idx]
    sub = ws.subset(pick)
    c = slice(0, context_len)
    true_lon, true_lat, true_t = sub.lon[:, truth], sub.lat[:, truth], sub.t_ns[:, truth]
    m_lon, m_lat = model_all[0][idx], model_all[1][idx]
    cv_lon, cv_lat = cv_all[0][idx], cv_all[1][idx]
    mixture = model.config.output.head == "mixture"
    g = torch.Generator().manual_seed(int(seed))
    draws = [
        rollout(model, sub, context_len, horizon, how="sample", generator=g) for _ in range(n_samples if mixture else 1)
    ]
    s_lon, s_lat, s_t = (np.stack([d[i] for d in draws]) for i in range(3))  # (S, N, H)

    data = {
        "n_windows": np.array(len(sel)),
        "n_subset_windows": np.array(len(pick)),
        "context_len": np.array(context_len),
        "horizon": np.array(horizon),
        "mixture": np.array(mixture),
        "seed": np.array(seed),
        "err_model_m": np.array(step_errors_m(model_all[0], model_all[1], all_lon, all_lat)),  # (H,) all windows
        "err_constant_velocity_m": np.array(step_errors_m(cv_all[0], cv_all[1], all_lon, all_lat)),
    }
    ex = np.unique(np.linspace(0, len(pick) - 1, min(n_examples, len(pick))).round().astype(int))
    data.update(
        ex_context_lon=sub.lon[ex, c],
        ex_context_lat=sub.lat[ex, c],
        ex_true_lon=true_lon[ex],
        ex_true_lat=true_lat[ex],
        ex_model_lon=m_lon[ex],
        ex_model_lat=m_lat[ex],
        ex_cv_lon=cv_lon[ex],
        ex_cv_lat=cv_lat[ex],
        ex_traj_id=sub.traj_id[ex].astype(str),
    )
    if mixture:
        data.update(ex_sample_lon=s_lon[:, ex], ex_sample_lat=s_lat[:, ex])
        data.update(_calibration(s_lon, s_lat, m_lon, m_lat, true_lon, true_lat))
    data.update(_motion(sub, context_len, (true_lon, true_lat, true_t), (s_lon, s_lat, s_t)))
    return data


def _calibration(s_lon, s_lat, m_lon, m_lat, true_lon, true_lat) -> dict:
    """Coverage (levels, H) of the sampled futures' ``LEVELS`` distance quantiles around the forecast."""
    from trajfm.geo import haversine_m

    d_samples = haversine_m(s_lon, s_lat, m_lon[None], m_lat[None])  # (S, N, H) spread around the forecast
    d_true = haversine_m(true_lon, true_lat, m_lon, m_lat)  # (N, H)
    radius = np.quantile(d_samples, LEVELS, axis=0)  # (levels, N, H)
    return {"calibration_levels": LEVELS, "calibration_coverage": (d_true[None] <= radius).mean(axis=1)}


def _motion(sub, context_len: int, truth: tuple, samples: tuple) -> dict:
    """``real_*`` / ``gen_*`` motion statistics of the real continuations and of the sampled ones
    (``(lon, lat, t_ns)`` each), every track starting at the last context fix."""
    from trajfm.evaluate.metrics import motion_statistics

    true_lon, true_lat, true_t = truth
    s_lon, s_lat, s_t = samples
    last = (
        sub.lon[:, context_len - 1 : context_len],
        sub.lat[:, context_len - 1 : context_len],
        sub.t_ns[:, context_len - 1 : context_len],
    )
    real = motion_statistics(
        np.hstack([last[0], true_lon]), np.hstack([last[1], true_lat]), np.hstack([last[2], true_t])
    )
    gen_lon = np.concatenate([np.hstack([last[0], s]) for s in s_lon])
    gen_lat = np.concatenate([np.hstack([last[1], s]) for s in s_lat])
    gen_t = np.concatenate([np.hstack([last[2], s]) for s in s_t])
    gen = motion_statistics(gen_lon, gen_lat, gen_t)
    data = {}
    for name in MOTION:
        data[f"real_{name}"], data[f"gen_{name}"] = real[name], gen[name]
    return data


def load_plot_data(results_json: Path, results: dict) -> dict | None:
    name = results.get("plot_data")
    if not name:
        return None
    path = Path(results_json).with_name(name)
    if not path.is_file():
        raise FileNotFoundError(f"{results_json} names plot data {name}, which is not beside it")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---------------------------------------------------------------------------------------------
# Figures


def _figure(w: float = 6.0, h: float = 4.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100)


def _metres(lon0, lat0, lon, lat):
    from trajfm.geo import displacement_m

    return displacement_m(np.broadcast_to(lon0, np.shape(lon)), np.broadcast_to(lat0, np.shape(lat)), lon, lat)


def trajectories_figure(d: dict):
    """Example windows: context, truth, forecast (+ sampled futures), constant velocity, in metres."""
    n = len(d["ex_true_lon"])
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _figure(4.0 * cols, 3.6 * rows)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        lon0, lat0 = d["ex_context_lon"][i, -1], d["ex_context_lat"][i, -1]

        def xy(lon, lat, lon0=lon0, lat0=lat0):
            return _metres(lon0, lat0, lon, lat)

        if "ex_sample_lon" in d:
            for s in range(len(d["ex_sample_lon"])):
                ax.plot(
                    *xy(np.r_[lon0, d["ex_sample_lon"][s, i]], np.r_[lat0, d["ex_sample_lat"][s, i]]),
                    color="tab:orange",
                    alpha=0.2,
                    lw=0.8,
                    label="sampled futures" if s == 0 else None,
                )
        ax.plot(*xy(d["ex_context_lon"][i], d["ex_context_lat"][i]), "k.-", ms=3, lw=1, label="context")
        ax.plot(*xy(np.r_[lon0, d["ex_true_lon"][i]], np.r_[lat0, d["ex_true_lat"][i]]), "g.-", ms=4, label="truth")
        ax.plot(*xy(np.r_[lon0, d["ex_model_lon"][i]], np.r_[lat0, d["ex_model_lat"][i]]), "r.--", ms=4, label="model")
        ax.plot(
            *xy(np.r_[lon0, d["ex_cv_lon"][i]], np.r_[lat0, d["ex_cv_lat"][i]]), "b:", lw=1, label="constant velocity"
        )
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(str(d["ex_traj_id"][i])[:28], fontsize=8)
        ax.set_xlabel("east (m)", fontsize=8)
        ax.set_ylabel("north (m)", fontsize=8)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def error_vs_horizon_figure(d: dict):
    fig = _figure()
    ax = fig.add_subplot()
    steps = np.arange(1, int(d["horizon"]) + 1)
    ax.plot(steps, d["err_model_m"], "r.-", label="model")
    ax.plot(steps, d["err_constant_velocity_m"], "b.-", label="constant velocity")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("mean error (m, great circle)")
    ax.set_title(f"error vs horizon ({int(d['n_windows'])} windows)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def calibration_figure(d: dict):
    fig = _figure(5, 5)
    ax = fig.add_subplot()
    levels, cov = d["calibration_levels"], d["calibration_coverage"]  # (levels,), (levels, H)
    H = cov.shape[1]
    for h in sorted({0, H // 2, H - 1}):
        ax.plot(levels, cov[:, h], ".-", label=f"step {h + 1}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.set_xlabel("predicted region (fraction of sampled futures)")
    ax.set_ylabel("fraction of true points inside")
    ax.set_title("mixture head calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def generation_figure(d: dict):
    from trajfm.evaluate.metrics import BINS

    fig = _figure(12, 3.6)
    for i, (name, label) in enumerate(MOTION.items()):
        ax = fig.add_subplot(1, len(MOTION), i + 1)
        bins = BINS[name]
        real, gen = d[f"real_{name}"], d[f"gen_{name}"]
        for values, colour, what in ((real, "tab:green", "real"), (gen, "tab:orange", "generated")):
            if len(values):
                ax.hist(
                    np.clip(values, bins[0], bins[-1]),
                    bins=bins,
                    weights=np.full(len(values), 1.0 / len(values)),
                    alpha=0.5,
                    color=colour,
                    label=f"{what} ({len(values)})",
                )
        if name != "turn_deg":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction per bin")
        ax.legend(fontsize=7)
    how = "sampled from the mixture head" if bool(d["mixture"]) else "point head: its forecasts, no sampling"
    fig.suptitle(f"real vs generated continuations ({how})")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The report


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "results"


def _accounting_lines(acc: dict) -> list[str]:
    lines = []
    if "ingest" in acc:
        a = acc["ingest"]
        lines.append(
            f"- ingest: read {a['rows_read']:,} = kept {a['rows_kept']:,} + quarantined {a['rows_quarantined']:,}"
        )
    if "preprocess" in acc:
        a = acc["preprocess"]
        lines.append(
            f"- preprocess: in {a['rows_in']:,} = kept {a['rows_kept']:,} + quarantined {a['rows_quarantined']:,}"
            f" -> {a['n_trajectories']:,} trajectories, {a['rows_out']:,} resampled points"
        )
    if "select" in acc:
        a = acc["select"]
        lines.append(f"- select: in {a['rows_in']:,} = kept {a['rows_kept']:,} + filtered out {a['rows_filtered']:,}")
    if "windows" in acc:
        lines.append(f"- windows: {acc['windows']}")
    return lines


def _evaluate_section(path: Path, res: dict, out_dir: Path, prefix: str) -> tuple[list[str], list[Path]]:
    from trajfm.evaluate.tables import metrics_table_markdown

    m = res.get("model", {})
    lines = [
        f"## {path.name}",
        "",
        f"- model: `{m.get('uri')}` (preset `{m.get('preset')}`"
        + (f", registry version {m['version']}" if m.get("version") else "")
        + f", {m.get('n_params', 0):,} parameters)",
        f"- data: {', '.join(f'`{s}`' for s in res.get('data', {}).get('sources', []))}",
        f"- split: the earliest {res['split']['fit_frac']:.0%} of the time span fits the learning baselines "
        f"({res['split']['fit_windows']} windows); metrics on the later {res['split']['eval_windows']} windows; "
        f"seed {res.get('seed')}",
        *_accounting_lines(res.get("accounting", {})),
        "",
        metrics_table_markdown(res["metrics"]),
        "",
    ]
    pngs: list[Path] = []
    d = load_plot_data(path, res)
    if d is None or int(d["n_windows"]) == 0:
        lines += ["(no plot data: no window long enough for context + horizon)", ""]
        return lines, pngs
    from trajfm.evaluate.maps import trajectory_map_figure

    figures = [
        ("trajectory_map", trajectory_map_figure(d), "Map: context, truth, forecast and its mean error (lon/lat)"),
        ("trajectories", trajectories_figure(d), "Forecasts on the real track (metres from the last context fix)"),
        ("error_vs_horizon", error_vs_horizon_figure(d), "Error vs horizon"),
    ]
    if "calibration_coverage" in d:
        figures.append(("calibration", calibration_figure(d), "Calibration of the mixture head"))
    figures.append(("generation", generation_figure(d), "Generation: real vs generated distributions"))
    for name, fig, title in figures:
        png = out_dir / f"{prefix}{name}.png"
        fig.savefig(png)
        pngs.append(png)
        lines += [f"### {title}", "", f"![{name}]({png.name})", ""]
    return lines, pngs


def transfer_horizon_figure(summary: dict):
    """Forecast ADE vs horizon (steps) per predictor, mean ± std over seeds; None without one."""
    curves: dict[str, list] = {}
    for key, v in summary.items():
        match = re.fullmatch(r"forecast\.ade_m@(\d+)\.(.+)", key)
        if match and v.get("mean") is not None:
            curves.setdefault(match.group(2), []).append((int(match.group(1)), v["mean"], v.get("std") or 0.0))
    if not curves:
        return None
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    for name, pts in curves.items():
        h, mean, std = (np.array(x) for x in zip(*sorted(pts)))
        ax.errorbar(h, mean, yerr=std, marker="o", capsize=3, label=name, linestyle="--" if "@" not in name else "-")
    ax.set_xlabel("steps ahead")
    ax.set_ylabel("ADE (m), mean ± std over seeds")
    ax.set_title("held-out forecast error")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _transfer_section(path: Path, res: dict, out_dir: Path, prefix: str) -> list[str]:
    from trajfm.evaluate.tables import metrics_table_markdown

    s = res.get("settings", {})
    lines = [
        f"## {path.name}: protocol `{res.get('protocol')}`, preset `{res.get('preset')}`",
        "",
        res.get("description", "").strip(),
        "",
        f"Mean ± std over seeds {res.get('seeds')}; training: {s.get('epochs')} epoch(s)"
        + (f", at most {s['max_steps']} steps" if s.get("max_steps") else "")
        + f"; fine-tuning: {s.get('fine_tune_steps')} steps; held-out windows: "
        + ", ".join(f"{k} {v}" for k, v in (res.get("heldout_windows") or {}).items())
        + ".",
        "",
        metrics_table_markdown(res["summary"]),
        "",
    ]
    fig = transfer_horizon_figure(res["summary"])
    if fig is not None:
        png = out_dir / f"{prefix}ade_vs_horizon.png"
        fig.savefig(png)
        lines += ["### Held-out ADE vs horizon", "", f"![ade_vs_horizon]({png.name})", ""]
    return lines


def render_report(results: list[str | Path], out_dir: str | Path) -> Path:
    """Write ``out_dir/report.md`` and its PNGs from results files; returns the markdown path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not results:
        raise ValueError("no results files given")
    lines = ["# trajfm evaluation report", ""]
    for i, r in enumerate(results):
        path = Path(r)
        if not path.is_file():
            raise FileNotFoundError(f"results file {path} does not exist")
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        kind = res.get("format")
        if kind == "trajfm.evaluate":
            section, _ = _evaluate_section(path, res, out_dir, f"{i}_{_slug(path.stem)}_")
        elif kind == "trajfm.transfer":
            section = _transfer_section(path, res, out_dir, f"{i}_{_slug(path.stem)}_")
        else:
            raise ValueError(
                f"{path}: not a trajfm results file (format {kind!r}); write one with trajfm evaluate --out"
            )
        lines += section
    report = out_dir / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n")
    return report


def log_report(
    out_dir: str | Path,
    root=None,
    run_name: str = "report",
    metrics: dict | None = None,
    experiment: str = "trajfm-evaluate",
    tags: dict | None = None,
) -> str:
    """Log ``out_dir`` (report.md + PNGs) as artifacts ``report/`` of a new MLflow run (and the
    flat ``metrics`` given); returns the run id."""
    import mlflow

    from trajfm.mlflow_store import mlflow_metric_name, setup_mlflow

    experiment_id = setup_mlflow(root, experiment)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        tags={k: str(v) for k, v in (tags or {}).items()},
        nested=mlflow.active_run() is not None,
    ) as run:
        numeric = {
            mlflow_metric_name(k): float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if numeric:
            mlflow.log_metrics(numeric)
        mlflow.log_artifacts(str(out_dir), artifact_path="report")
        return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trajfm report",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--results", nargs="+", required=True, help="results JSON files of trajfm evaluate")
    parser.add_argument("--out", required=True, help="report directory (report.md + PNGs)")
    parser.add_argument("--mlflow", action="store_true", help="log the report as artifacts of an MLflow run")
    parser.add_argument(
        "--data-root", default=None, help="data root whose MLflow store is used (default $TRAJFM_HOME or ./.trajfm)"
    )
    parser.add_argument("--run-name", default="report")
    args = parser.parse_args(argv)
    try:
        report = render_report(args.results, args.out)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"trajfm report: error: {exc}\n")
    print(report)
    if args.mlflow:
        metrics = {}
        for r in args.results:
            res = json.loads(Path(r).read_text())
            metrics.update({k: v for k, v in res.get("metrics", {}).items() if v is not None})
        print(f"mlflow run {log_report(Path(args.out), args.data_root, args.run_name, metrics)}")
    return 0
