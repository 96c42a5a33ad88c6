"""The pipeline run's summary (markdown): row accounting per stage, split sizes, the model's
forecast error next to constant velocity, and what the registry did, with links to each stage's
own run and artifacts. Built from the stage manifests (no Prefect here: ``tasks/summary.py``
finds the links and publishes it as the parent run's artifact)."""

from __future__ import annotations

from trajfm.store import read_manifest


def _n(value) -> str:
    return f"{int(value):,}" if isinstance(value, (int, float)) else str(value)


def pipeline_summary(result: dict, links: dict[str, list[tuple[str, str]]] | None = None) -> str:
    """Markdown for a ``pipeline`` flow result (``ingest_dir``, ``preprocess_dir``,
    ``features_dir``, ``train_dir``, ``validation``, ``metrics``, ``registration``). ``links``:
    per stage (``ingest``, ``validate-raw``, ...), ``(label, url)`` pairs shown beside it."""
    links = links or {}

    def see(stage: str) -> str:
        found = links.get(stage) or []
        return (" — " + ", ".join(f"[{label}]({url})" for label, url in found)) if found else ""

    ing, pre = read_manifest(result["ingest_dir"]), read_manifest(result["preprocess_dir"])
    feats, train = read_manifest(result["features_dir"]), read_manifest(result["train_dir"])
    m, reg, ok = result.get("metrics") or {}, result.get("registration") or {}, result.get("validation") or {}
    lines = ["# trajfm pipeline run", "", "## Rows (read = kept + quarantined at every stage)", ""]
    lines.append(
        f"- **ingest**: read {_n(ing.get('rows_read'))} = kept {_n(ing.get('rows_kept'))} + quarantined "
        f"{_n(ing.get('rows_quarantined'))}{see('ingest')}"
    )
    lines.append(f"- **validate raw**: {'passed' if ok.get('raw') else 'FAILED'}{see('validate-raw')}")
    reasons = ", ".join(f"{r} {_n(c)}" for r, c in (pre.get("quarantined_by_reason") or {}).items() if c)
    lines.append(
        f"- **preprocess**: in {_n(pre.get('rows_in'))} = kept {_n(pre.get('rows_kept'))} + quarantined "
        f"{_n(pre.get('rows_quarantined'))}"
        + (f" ({reasons})" if reasons else "")
        + f" -> {_n(pre.get('n_trajectories'))} trajectories, {_n(pre.get('rows_out'))} resampled "
        f"points{see('preprocess')}"
    )
    lines.append(
        f"- **validate processed**: {'passed' if ok.get('processed') else 'FAILED'}{see('validate-processed')}"
    )
    lines += ["", f"## Splits (chronological){see('features')}", "", "| split | windows | points |", "|---|---|---|"]
    for split, n in (feats.get("windows") or {}).items():
        lines.append(f"| {split} | {_n(n)} | {_n((feats.get('points') or {}).get(split, ''))} |")
    final = train.get("final") or {}
    lines += [
        "",
        f"## Model{see('train')}",
        "",
        (
            f"preset `{train.get('preset')}`, {_n(final.get('n_params', 0))} parameters, {final.get('epoch', '?')} "
            "epochs "
            f"({final.get('step', '?')} steps) on {train.get('device', '?')}; best validation loss "
            f"{final.get('best_val_loss')}"
        ),
    ]
    if result.get("model_dir") or m.get("blend") is not None:
        blend = m.get("blend")
        lines += [
            "",
            f"## Calibration{see('calibrate')}",
            "",
            (
                f"per-step blend with constant velocity, chosen on the validation split: {blend}"
                if blend is not None
                else "no never-worse rule stored (no validation window long enough)"
            ),
        ]
    lines += _metrics_section(m, see) + _registry_section(reg, see)
    lines += ["", "## Stage outputs", ""]
    lines += [
        f"- {k}: `{result[k]}`"
        for k in ("ingest_dir", "preprocess_dir", "features_dir", "train_dir", "model_dir")
        if result.get(k)
    ]
    return "\n".join(lines) + "\n"


def _metrics_section(m: dict, see) -> list[str]:
    """The evaluated split's forecast error, model vs constant velocity (and the Kalman filter)."""
    lines: list[str] = []
    if m:
        lines += [
            "",
            f"## {m.get('split', 'test').capitalize()} split: forecast error (metres){see('evaluate')}",
            "",
            f"{_n(m.get('n_windows'))} windows, context {m.get('context_len')} points, horizon {m.get('horizon')} "
            "steps.",
            "",
            "| metric | model | constant velocity | model vs baseline |",
            "|---|---|---|---|",
        ]
        for label, key in (("ADE", "ade_m"), ("FDE", "fde_m"), ("step 1", "fde_m@1")):
            if key in m and f"cv_{key}" in m:
                gain = (1 - m[key] / m[f"cv_{key}"]) * 100 if m[f"cv_{key}"] else float("nan")
                lines.append(f"| {label} | {m[key]:,.1f} | {m[f'cv_{key}']:,.1f} | {gain:+.1f}% |")
        if "kf_fde_m" in m:
            lines.append(
                f"\nKalman filter (noise fitted on train): ADE {m['kf_ade_m']:,.1f} m, FDE {m['kf_fde_m']:,.1f} m."
            )
    return lines


def _registry_section(reg: dict, see) -> list[str]:
    """What the registry did with the new version."""
    lines: list[str] = []
    if reg:
        what = "reused (same lineage: no new version)" if reg.get("reused") else reg.get("decision", "")
        lines += [
            "",
            f"## Registry{see('register')}",
            "",
            f"**{reg.get('name')}** version **{reg.get('version')}**: {what}; `champion` is version "
            f"{reg.get('champion_version')}." + (f" {reg['reason']}." if reg.get("reason") else ""),
        ]
        if reg.get("run_url"):
            lines.append(f"MLflow run: [{reg['run_id']}]({reg['run_url']})")
    return lines
