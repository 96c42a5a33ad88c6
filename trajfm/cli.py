"""The trajfm command.

    trajfm demo [--data-root DIR] [--epochs N] [--preset NAME]
    trajfm run FLOW [--param value ...]      e.g. trajfm run pipeline --epochs 2 --preset tutorial
    trajfm run FLOW --help                   the flow's parameters, with their descriptions
    trajfm flows                             list the flows
    trajfm presets                           list the model presets
    trajfm train --preset NAME [--features-dir DIR] [--epochs N]
    trajfm bench NAME --out FILE.json        a benchmark of benchmarks/ (preprocess, model, pretrain, scaling, mfu_gpu)
    trajfm evaluate --model URI --data PATH  evaluate any model on any data (trajfm/evaluate/cli.py)
    trajfm report ...                        markdown + PNG report of an evaluation (trajfm/evaluate/report.py)
    trajfm registry list|show|promote|rollback   the MLflow registry (trajfm/registry/cli.py)
    trajfm forecast --model URI --data X.parquet --horizon N --out Y.parquet   (trajfm/forecaster.py)

Flows live in the top-level flows package and import Prefect; they are imported only when a
command needs them, so importing trajfm stays Prefect-free.
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
    "pretrain": ("flows.pretrain", "pretrain"),
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
    _stop_orphans(root)
    return root


def _stop_orphans(root: Path) -> None:
    """What a SIGKILLed run left: Prefect's temporary server of this PREFECT_HOME (still holding
    its port and database) and the stage temporary directories (removed by the next writer)."""
    from trajfm.orphans import stop_orphaned_prefect_servers

    if os.environ.get("PREFECT_API_URL"):
        return  # a real server: nothing temporary to clean
    stopped = stop_orphaned_prefect_servers(os.environ["PREFECT_HOME"])
    if stopped:
        print(
            f"trajfm: stopped {len(stopped)} Prefect temporary server(s) left by a killed run (pids {stopped})",
            file=sys.stderr,
        )


def _preflight(flow: str, params: dict) -> None:
    """The checks a flow runs first, run here before Prefect starts (one line, in about a second)."""
    from trajfm.preflight import check_run

    check_run(
        # pretrain's sources are names of corpus entries (its flow checks them against the corpus)
        sources=None if flow == "pretrain" else params.get("sources"),
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


def summary_text(result: dict, root: Path, seconds: float, title: str = "trajfm demo") -> str:
    """The demo's closing summary: row accounting, metrics vs baseline, registry, UI commands."""
    from trajfm.evaluate.run import forecast_rows
    from trajfm.store import read_manifest

    ing = read_manifest(result["ingest_dir"])
    pre = read_manifest(result["preprocess_dir"])
    feat = read_manifest(result["features_dir"])
    m, reg = result["metrics"], result["registration"]
    w = max(18, len(m["preset"]) + 7)  # the label column fits "model <preset>"
    lines = [
        "",
        "=" * 72,
        f"{title} finished in {seconds:.0f} s   (data root: {root})",
        "-" * 72,
        f"ingest      read {ing['rows_read']:,} points = kept {ing['rows_kept']:,} "
        f"+ quarantined {ing['rows_quarantined']:,}",
        f"preprocess  in {pre['rows_in']:,} = kept {pre['rows_kept']:,} + quarantined {pre['rows_quarantined']:,}"
        f"  {dict(pre.get('quarantined_by_reason', {}))}",
        f"            -> {pre['n_trajectories']:,} trajectories, {pre['rows_out']:,} points resampled",
        f"validate    raw: {'passed' if result['validation']['raw'] else 'FAILED'}, processed: "
        f"{'passed' if result['validation']['processed'] else 'FAILED'}",
        f"features    windows train/val/test = "
        f"{feat['windows']['train']:,}/{feat['windows']['val']:,}/{feat['windows']['test']:,}",
        f"evaluate    test split, {m['n_windows']:,} windows, {m['context_len']} points of context, "
        f"{m['horizon']} steps ahead",
        *forecast_rows(m, w),
        f"register    {reg['name']} version {reg['version']}: "
        + (
            "same data, config and evaluation as before: reused, no new version"
            if reg.get("reused")
            else (reg.get("decision") or ("champion" if reg["promoted"] else "challenger"))
        )
        + f"; champion is version {reg['champion_version']}",
        "-" * 72,
        "Open the UIs on this data (both listen on 127.0.0.1 only):",
        f"  Prefect: PREFECT_HOME={os.environ.get('PREFECT_HOME')} .venv/bin/prefect server start "
        "--host 127.0.0.1 --port 4200   -> http://127.0.0.1:4200",
        f"  MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///{root}/mlflow.db "
        "--host 127.0.0.1 --port 5000   -> http://127.0.0.1:5000",
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


def plain_help(text: str | None) -> str:
    """Help text for a terminal: no RST/Markdown backticks."""
    return (text or "").replace("``", "").replace("`", "")


def _flow_doc(flow) -> tuple[str, dict[str, str]]:
    """A flow's summary (its docstring before ``Args:``) and its parameter descriptions (from the
    parameter schema Prefect built for its run form)."""
    import inspect

    summary = (inspect.getdoc(flow.fn) or "").split("\nArgs:")[0].strip()
    props = flow.parameters.model_dump().get("properties", {})
    return summary, {k: " ".join(str(v.get("description") or "").split()) for k, v in props.items()}


def _type_text(annotation) -> str:
    """A parameter type in a few words: the choices of a Literal, the name of a model."""
    import typing

    if isinstance(annotation, str):
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return " | ".join(_type_text(a) for a in inner) + (" | null" if len(inner) < len(args) else "")
    if origin is not None:
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def _model_of(annotation):
    """The Pydantic model inside ``Model | None``, or None."""
    import typing

    from pydantic import BaseModel

    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def flow_help(name: str) -> str:
    """``trajfm run NAME --help``: what the flow does and each parameter with type, default, description."""
    import inspect
    import textwrap

    fn = _load_flow(name)
    summary, docs = _flow_doc(fn)
    lines = [
        f"usage: trajfm run {name} [--PARAM VALUE ...]   (values are JSON when they parse, else strings)",
        "",
        plain_help(summary),
        "",
        "parameters:",
    ]
    for p in inspect.signature(fn.fn, eval_str=True).parameters.values():
        default = (
            "required" if p.default is inspect.Parameter.empty else f"default {json.dumps(p.default, default=str)}"
        )
        lines.append(f"  --{p.name.replace('_', '-')}  ({_type_text(p.annotation)}; {default})")
        wrap = dict(width=96, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False)
        lines += textwrap.wrap(plain_help(docs.get(p.name, "")), **wrap)
        model = _model_of(p.annotation)
        if model is not None:
            lines += textwrap.wrap(
                "JSON keys: " + ", ".join(f.alias or k for k, f in model.model_fields.items()), **wrap
            )
    return "\n".join(lines)


def check_params(name: str, params: dict) -> dict:
    """The ``--param`` values validated against the flow's signature (dicts parsed into its
    parameter models); a ``SystemExit`` with one line per bad parameter, naming the known ones."""
    import inspect

    from pydantic import TypeAdapter, ValidationError

    from trajfm.params import one_line

    sig = inspect.signature(_load_flow(name).fn, eval_str=True)
    unknown = sorted(set(params) - set(sig.parameters))
    if unknown:
        known = ", ".join(f"--{p.replace('_', '-')}" for p in sig.parameters)
        raise SystemExit(f"trajfm run {name}: unknown parameter(s) {unknown}; known: {known}")
    missing = [p.name for p in sig.parameters.values() if p.default is inspect.Parameter.empty and p.name not in params]
    if missing:
        raise SystemExit(
            f"trajfm run {name}: missing required parameter(s) {', '.join('--' + m.replace('_', '-') for m in missing)}"
        )
    out, errors = {}, []
    for key, value in params.items():
        annotation = sig.parameters[key].annotation
        if annotation is inspect.Parameter.empty:
            out[key] = value
            continue
        adapter = TypeAdapter(annotation)
        try:
            out[key] = adapter.validate_python(value)
        except ValidationError as exc:
            try:  # --sources embedded:small (one string where a list of them is expected)
                out[key] = adapter.validate_python([value])
            except ValidationError:
                errors.append(f"--{key.replace('_', '-')}: {one_line(exc)}")
    if errors:
        raise SystemExit(f"trajfm run {name}: " + "; ".join(errors))
    return out


def run_summary(name: str, result, seconds: float) -> str:
    """The closing lines of ``trajfm run``: where the output is and its headline numbers."""
    from trajfm.store import read_manifest

    head = f"trajfm run {name}: finished in {seconds:.0f} s"
    if isinstance(result, str):
        try:
            m = read_manifest(result)
        except (OSError, ValueError):
            m = {}
        counts = {
            k: m[k]
            for k in ("rows_read", "rows_kept", "rows_quarantined", "rows_in", "rows_out", "n_trajectories")
            if k in m
        }
        if "windows" in m:
            counts["windows"] = m["windows"]
        if "final" in m:
            counts.update({k: v for k, v in m["final"].items() if isinstance(v, (int, float))})
        extra = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in counts.items())
        return f"{head}\n  output: {result}" + (f"\n  {extra}" if extra else "")
    if not isinstance(result, dict):
        return f"{head}\n  result: {result}"
    lines = [head]
    for key, value in result.items():
        if isinstance(value, dict):
            flat = {k: v for k, v in value.items() if isinstance(v, (int, float, str, bool)) or v is None}
            shown = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in list(flat.items())[:8])
            more = f" (+{len(value) - 8} more)" if len(flat) > 8 or len(value) > len(flat) else ""
            lines.append(f"  {key}: {shown}{more}")
        elif isinstance(value, list):
            lines.append(f"  {key}: {len(value)} item(s)" + (f": {', '.join(map(str, value[:3]))}" if value else ""))
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def cmd_run(args, extra: list[str]) -> int:
    if args.flow is None:
        print("usage: trajfm run FLOW [--PARAM VALUE ...]; trajfm run FLOW --help lists its parameters\n")
        return cmd_flows(args) if any(tok in ("-h", "--help") for tok in extra) else (cmd_flows(args) or 2)
    if any(tok in ("-h", "--help") for tok in extra):
        print(flow_help(args.flow))
        return 0
    raw = _parse_params(extra)
    _preflight(args.flow, raw)
    # Before any flow (and so Prefect) is imported: Prefect reads PREFECT_HOME and its settings once.
    root = _prepare_env(raw.get("data_root") if isinstance(raw.get("data_root"), str) else None)
    params = check_params(args.flow, raw)
    started = time.perf_counter()
    result = _load_flow(args.flow)(**params)
    if args.flow == "pipeline":
        print(summary_text(result, root, time.perf_counter() - started, title="trajfm run pipeline"))
    else:
        print(run_summary(args.flow, result, time.perf_counter() - started))
    return 0


def cmd_flows(_args) -> int:
    for name in FLOWS:
        summary, _ = _flow_doc(_load_flow(name))
        first = plain_help(" ".join(summary.split("\n\n")[0].split()))
        print(f"{name:15} {first}")
    print("\ntrajfm run FLOW --help lists a flow's parameters with their descriptions.")
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


def cmd_bench(args, extra: list[str] | None = None) -> int:
    """``benchmarks.<name>.main(out=Path, argv=[...])`` writes JSON + a markdown table; the
    arguments after NAME and --out go to the benchmark (e.g. ``trajfm bench pretrain --scale 0.01``).
    The benchmarks live outside the library (``benchmarks/``): loaded by name, never imported by it."""
    import importlib

    try:
        module = importlib.import_module(f"benchmarks.{args.name}")
    except ModuleNotFoundError as exc:
        raise SystemExit(f"no benchmark named {args.name!r} (benchmarks/{args.name}.py): {exc}") from exc
    if extra:
        return int(module.main(out=Path(args.out), argv=extra) or 0)
    return int(module.main(out=Path(args.out)) or 0)


# Subcommands that own their argument parsing: ``module.main(argv) -> int``.
DELEGATED = {
    "evaluate": "trajfm.evaluate.cli",
    "report": "trajfm.evaluate.report",
    "registry": "trajfm.registry.cli",
    "forecast": "trajfm.forecaster",
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
    from trajfm.params import DEFAULT_PRESET, PRESETS

    parser = argparse.ArgumentParser(
        prog="trajfm", description=plain_help(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole pipeline on the embedded real AIS data")
    demo.add_argument("--data-root", default=None, help="default: $TRAJFM_HOME or ./.trajfm")
    demo.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME",
        help=f"model preset, one of {', '.join(PRESETS)} (default {DEFAULT_PRESET}: transfers to unseen movers)",
    )
    demo.add_argument("--epochs", type=int, default=5)
    run = sub.add_parser(
        "run",
        help="run one flow: trajfm run FLOW --param value ... (trajfm run FLOW --help: its parameters)",
        add_help=False,
    )
    run.add_argument("flow", nargs="?", choices=sorted(FLOWS), metavar="FLOW", help=f"one of {', '.join(FLOWS)}")
    sub.add_parser("flows", help="list the flows (trajfm run FLOW --help: a flow's parameters)")
    sub.add_parser("presets", help="list the model presets")
    train = sub.add_parser("train", help="train a model preset")
    train.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        metavar="NAME",
        help=f"model preset, one of {', '.join(PRESETS)} (default {DEFAULT_PRESET})",
    )
    train.add_argument("--features-dir", default=None, help="a features stage directory; default: run the pipeline")
    train.add_argument("--data-root", default=None)
    train.add_argument("--epochs", type=int, default=5)
    train.add_argument("--batch-size", type=int, default=128)
    bench = sub.add_parser("bench", help="run a benchmark: trajfm bench NAME --out FILE.json")
    bench.add_argument("name", help="a module of benchmarks/, e.g. preprocess, model, pretrain or mfu_gpu")
    bench.add_argument("--out", required=True, help="JSON results file (a markdown table is written beside it)")
    for name, module in DELEGATED.items():
        sub.add_parser(name, help=f"see: trajfm {name} --help ({module})", add_help=False)
    args, extra = parser.parse_known_args(argv)
    if args.command == "run":
        return cmd_run(args, extra)
    if args.command == "bench":
        return cmd_bench(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return {"demo": cmd_demo, "flows": cmd_flows, "bench": cmd_bench, "presets": cmd_presets, "train": cmd_train}[
        args.command
    ](args)


if __name__ == "__main__":
    sys.exit(main())
