"""The ``trajfm`` command.

    trajfm demo [--data-root DIR] [--epochs N] [--preset NAME]
    trajfm run FLOW [--param value ...]      e.g. trajfm run pipeline --epochs 2 --preset tutorial
    trajfm flows                             list the flows and their parameters
    trajfm presets                           list the model presets
    trajfm train --preset NAME [--features-dir DIR] [--epochs N]
    trajfm bench NAME --out FILE.json        run a benchmark (preprocess, model)
    trajfm evaluate --model URI --data PATH  evaluate any model on any data (trajfm/evaluate/cli.py)
    trajfm report ...                        markdown + PNG report of an evaluation (trajfm/evaluate/report.py)
    trajfm registry list|show|promote|rollback   the MLflow registry (trajfm/registry/cli.py)

Flows live in the top-level ``flows`` package and import Prefect; they are imported only when a
command needs them, so ``import trajfm`` stays Prefect-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FLOWS = {
    "pipeline": ("flows.pipeline", "pipeline"),
    "ingest": ("flows.ingest", "ingest_flow"),
    "preprocess": ("flows.preprocess", "preprocess_flow"),
    "validate": ("flows.validate", "validate_flow"),
    "features": ("flows.features", "features_flow"),
    "train": ("flows.train", "train_flow"),
    "evaluate": ("flows.evaluate", "evaluate_flow"),
    "register": ("flows.register", "register_flow"),
    "retrain": ("flows.retrain", "retrain"),
    "evaluate-model": ("flows.evaluate", "evaluate_model_flow"),
}


def _prepare_env(data_root: str | None) -> Path:
    """Resolve the data root (refused in one line when it is not writable) and keep Prefect's and
    matplotlib's state inside it unless set."""
    from trajfm.preflight import check_data_root
    from trajfm.store import ENV_ROOT

    root = check_data_root(data_root)
    os.environ[ENV_ROOT] = str(root)
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect"))
    os.environ.setdefault("MPLCONFIGDIR", str(root / "matplotlib"))
    for var in ("PREFECT_SERVER_ANALYTICS_ENABLED",):
        os.environ.setdefault(var, "false")
    for var in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(var, "true")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # A fresh Prefect database takes a while to migrate on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Task results as JSON, never pickles: nothing under the data root is unpickled (docs/faults.md).
    os.environ.setdefault("PREFECT_RESULTS_DEFAULT_SERIALIZER", "json")
    check_data_root(root)  # again, now that PREFECT_HOME (under the root by default) is known
    return root


def _preflight(flow: str, params: dict) -> None:
    """The checks a flow runs first, run here before Prefect starts (one line, in about a second)."""
    from trajfm.preflight import check_run

    check_run(
        sources=params.get("sources"),
        data_root=params.get("data_root"),
        preset=params.get("preset"),
        model_name=params.get("name") if flow == "register" else params.get("model_name"),
        ingest_params=params.get("params") if flow == "ingest" else params.get("ingest_params"),
    )


def _load_flow(name: str):
    import importlib

    if name not in FLOWS:
        raise SystemExit(f"unknown flow {name!r}; flows: {', '.join(FLOWS)}")
    module, attr = FLOWS[name]
    return getattr(importlib.import_module(module), attr)


def _parse_params(tokens: list[str]) -> dict:
    """``--key value`` pairs; values are JSON when they parse (numbers, lists, dicts), else strings."""
    params, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise SystemExit(f"expected --param value, got {tok!r}")
        key = tok[2:].replace("-", "_")
        if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
            params[key], i = True, i + 1
            continue
        raw = tokens[i + 1]
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
        i += 2
    return params


def summary_text(result: dict, root: Path, seconds: float) -> str:
    """The demo's closing summary: row accounting, metrics vs baseline, registry, UI commands."""
    from trajfm.store import read_manifest

    ing = read_manifest(result["ingest_dir"])
    pre = read_manifest(result["preprocess_dir"])
    feat = read_manifest(result["features_dir"])
    m, reg = result["metrics"], result["registration"]
    w = max(18, len(m["preset"]) + 7)  # the label column fits "model <preset>"
    lines = [
        "",
        "=" * 72,
        f"trajfm demo finished in {seconds:.0f} s   (data root: {root})",
        "-" * 72,
        f"ingest      read {ing['rows_read']:,} points = kept {ing['rows_kept']:,} + quarantined {ing['rows_quarantined']:,}",
        f"preprocess  in {pre['rows_in']:,} = kept {pre['rows_kept']:,} + quarantined {pre['rows_quarantined']:,}"
        f"  {dict(pre.get('quarantined_by_reason', {}))}",
        f"            -> {pre['n_trajectories']:,} trajectories, {pre['rows_out']:,} points resampled",
        f"validate    raw: {'passed' if result['validation']['raw'] else 'FAILED'}, processed: "
        f"{'passed' if result['validation']['processed'] else 'FAILED'}",
        f"features    windows train/val/test = {feat['windows']['train']:,}/{feat['windows']['val']:,}/{feat['windows']['test']:,}",
        f"evaluate    test split, {m['n_windows']:,} windows, {m['context_len']} points of context, {m['horizon']} steps ahead",
        f"            {'':{w}}{'ADE (m)':>10}{'FDE (m)':>10}{'1-step (m)':>12}",
        f"            {'model ' + m['preset']:{w}}{m['ade_m']:10.1f}{m['fde_m']:10.1f}{m['step1_m']:12.1f}",
        f"            {'constant velocity':{w}}{m['cv_ade_m']:10.1f}{m['cv_fde_m']:10.1f}{m['cv_step1_m']:12.1f}",
        f"register    {reg['name']} version {reg['version']}: "
        + ("same data, config and evaluation as before: reused, no new version" if reg.get("reused")
           else (reg.get("decision") or ("champion" if reg["promoted"] else "challenger")))
        + f"; champion is version {reg['champion_version']}",
        "-" * 72,
        "Open the UIs on this data (both listen on 127.0.0.1 only):",
        f"  Prefect: PREFECT_HOME={os.environ.get('PREFECT_HOME')} .venv/bin/prefect server start --host 127.0.0.1 --port 4200"
        "   -> http://127.0.0.1:4200",
        f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db --host 127.0.0.1 --port 5000"
        "   -> http://127.0.0.1:5000",
        "  (or: make ui-prefect / make ui-mlflow)",
        "=" * 72,
    ]
    return "\n".join(lines)


def cmd_demo(args) -> int:
    _preflight("pipeline", {"data_root": args.data_root, "preset": args.preset})
    root = _prepare_env(args.data_root)
    pipeline = _load_flow("pipeline")
    started = time.perf_counter()
    result = pipeline(data_root=str(root), preset=args.preset, epochs=args.epochs)
    print(summary_text(result, root, time.perf_counter() - started))
    return 0


def cmd_run(args, extra: list[str]) -> int:
    params = _parse_params(extra)
    _preflight(args.flow, params)
    _prepare_env(params.get("data_root"))
    result = _load_flow(args.flow)(**params)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_flows(_args) -> int:
    import inspect

    for name in FLOWS:
        fn = _load_flow(name)
        print(f"{name}{inspect.signature(fn.fn)}")
    return 0


def cmd_presets(_args) -> int:
    from trajfm.model.config import describe_presets

    for name, text in describe_presets().items():
        print(f"{name:16} {text}")
    return 0


def cmd_train(args) -> int:
    """Train a preset: on an existing features stage (library call, no Prefect), or through the
    pipeline flow on the embedded data (every stage before training is reused from cache)."""
    _preflight("train", {"data_root": args.data_root, "preset": args.preset})
    root = _prepare_env(args.data_root)
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size}
    if args.features_dir:
        from trajfm.store import read_manifest
        from trajfm.train import run_training

        out = run_training(args.features_dir, root=root, preset=args.preset, train_overrides=overrides)
        print(json.dumps({"train_dir": str(out), **read_manifest(out).get("final", {})}, indent=2, default=str))
        return 0
    pipeline = _load_flow("pipeline")
    started = time.perf_counter()
    result = pipeline(data_root=str(root), preset=args.preset, epochs=args.epochs, batch_size=args.batch_size)
    print(summary_text(result, root, time.perf_counter() - started))
    return 0


def cmd_bench(args) -> int:
    """``trajfm.bench.<name>.main(out=Path, argv=[...])`` writes JSON + a markdown table."""
    import importlib

    try:
        module = importlib.import_module(f"trajfm.bench.{args.name}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"no benchmark named {args.name!r} (trajfm/bench/{args.name}.py): {exc}")
    return int(module.main(out=Path(args.out)) or 0)


# Subcommands that own their argument parsing: ``module.main(argv) -> int``.
DELEGATED = {
    "evaluate": "trajfm.evaluate.cli",
    "report": "trajfm.evaluate.report",
    "registry": "trajfm.registry.cli",
}


def main(argv: list[str] | None = None) -> int:
    """Run a command; an error is one line on stderr and exit status 1 (``TRAJFM_DEBUG=1`` shows
    the traceback)."""
    try:
        return _main(argv)
    except Exception as exc:
        if os.environ.get("TRAJFM_DEBUG"):
            raise
        print(f"trajfm: error: {error_line(exc)}", file=sys.stderr)
        return 1


def error_line(exc: BaseException) -> str:
    """An exception as one line: its message's lines joined (the type named unless it is a
    ``ValueError``-like message that explains itself)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if isinstance(exc, (ValueError, FileNotFoundError, PermissionError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        return int(importlib.import_module(DELEGATED[argv[0]]).main(argv[1:]) or 0)
    parser = argparse.ArgumentParser(prog="trajfm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded real AIS data")
    demo.add_argument("--data-root", default=None, help="default: $TRAJFM_HOME or ./.trajfm")
    demo.add_argument("--preset", default="timesfm-patch-context", help="model preset (default: the one that transfers to unseen movers)")
    demo.add_argument("--epochs", type=int, default=5)
    run = sub.add_parser("run", help="run one flow: trajfm run FLOW --param value ...")
    run.add_argument("flow", choices=sorted(FLOWS))
    sub.add_parser("flows", help="list flows and their parameters")
    sub.add_parser("presets", help="list the model presets")
    train = sub.add_parser("train", help="train a model preset")
    train.add_argument("--preset", default="tutorial")
    train.add_argument("--features-dir", default=None, help="a features stage directory; default: run the pipeline")
    train.add_argument("--data-root", default=None)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=128)
    bench = sub.add_parser("bench", help="run a benchmark: trajfm bench NAME --out FILE.json")
    bench.add_argument("name", help="a module of trajfm.bench, e.g. preprocess or model")
    bench.add_argument("--out", required=True, help="JSON results file (a markdown table is written beside it)")
    for name, module in DELEGATED.items():
        sub.add_parser(name, help=f"see: trajfm {name} --help ({module})", add_help=False)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return cmd_run(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return {"demo": cmd_demo, "flows": cmd_flows, "bench": cmd_bench, "presets": cmd_presets, "train": cmd_train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
