"""``trajfm evaluate``: any model on any data, or a transfer protocol.

    trajfm evaluate --model URI --data PATH [PATH ...] [--format NAME] [--kind KIND]
                    [--tasks t1,t2] [--seed N] [--data-root DIR] --out FILE.json
    trajfm evaluate --protocol FILE.yaml --preset NAME [--epochs N] [--max-steps N]
                    [--fine-tune-steps N] [--fine-tune-lr LR] [--seeds 0,1,2] [--data-root DIR] --out FILE.json

URI: ``models:/trajfm@champion``, ``models:/trajfm/3``, ``runs:/RUN_ID/model`` (the MLflow store
of the data root), a ``model.pt`` or a train stage directory. PATH: files, directories, globs,
fsspec URLs, ``embedded:small`` / ``embedded:all`` (the embedded AIS files), or a preprocess
stage directory. Prints a table (metric rows x model / baseline columns) and writes the JSON
(see ``trajfm.evaluate.suite``); ``trajfm report --results FILE.json --out DIR`` draws it.
"""

from __future__ import annotations

import argparse
import json
import os

from trajfm.defaults import DEFAULT_PRESET


def _json_arg(text: str | None, what: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object, got {value!r}")
    return value


def _task_params(text: str | None) -> dict:
    """``--params``: per-task parameters, checked against the tasks and their keywords
    (``trajfm.evaluate.params.EvaluateParams``): a typo is a one-line error naming the known keys."""
    from trajfm.evaluate.params import EvaluateParams
    from trajfm.params import parse

    value = _json_arg(text, "--params")
    return parse(EvaluateParams, value, "--params").to_params() if value else {}


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds names no seed")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trajfm evaluate",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        help="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model, a model.pt or a train stage directory",
    )
    p.add_argument("--data", nargs="+", help="data files/directories/globs, or embedded:SUBSET")
    p.add_argument("--format", default=None, help="reader name (default: detected per file)")
    p.add_argument(
        "--kind", default=None, help="mover kind of every point (default: the format's); picks the cleaning defaults"
    )
    p.add_argument(
        "--reader-options",
        default=None,
        help='reader options as JSON, e.g. \'{"columns": {...}, "timezone": "Europe/London"}\'',
    )
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all)")
    p.add_argument(
        "--params", default=None, help='per-task params as JSON, e.g. \'{"forecast": {"horizons": [1, 5]}}\''
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window", type=int, default=32, help="points per evaluation window")
    p.add_argument(
        "--fit-frac",
        type=float,
        default=0.3,
        help="earliest fraction of the time span that fits the learning baselines",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--protocol", default=None, help="a transfer protocol file (protocols/*.yaml)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="protocol: the preset trained on the train sources")
    p.add_argument(
        "--base-model",
        default=None,
        help="protocol: a pre-trained base model scored zero-shot and fine-tuned (models:/NAME@ALIAS or a path; "
        "default: the protocol's model: key)",
    )
    p.add_argument(
        "--no-train-sources",
        dest="train_sources",
        action="store_false",
        help="protocol: do not train --preset on the train sources (the base model stands for it)",
    )
    p.add_argument(
        "--no-in-domain",
        dest="in_domain",
        action="store_false",
        help="protocol: do not train --preset on the held-out fine-tune split alone",
    )
    p.add_argument("--epochs", type=int, default=5, help="protocol: training epochs")
    p.add_argument("--max-steps", type=int, default=None, help="protocol: cap on training steps")
    p.add_argument(
        "--fine-tune-steps", type=int, default=100, help="protocol: fine-tuning steps on the held-out fine-tune split"
    )
    p.add_argument(
        "--fine-tune-lr",
        type=float,
        default=None,
        help="protocol: peak learning rate of fine-tuning (default: the training one, 1e-3)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="protocol: windows per training step")
    p.add_argument("--seeds", default="0,1,2", help="protocol: training seeds (mean ± std over them)")
    p.add_argument("--data-root", default=None, help="default: $TRAJFM_HOME or ./.trajfm")
    p.add_argument("--out", required=True, help="results JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from trajfm.model.checkpoint import check_device

        check_device(args.device)  # an absent device fails now, not after reading the data
        if args.protocol:
            if args.model or args.data:
                raise ValueError(
                    "--protocol trains its own models on its own data: do not combine it with --model/--data"
                )
            return _protocol(args)
        if not args.model or not args.data:
            raise ValueError("give --model URI and --data PATH (or --protocol FILE --preset NAME)")
        return _evaluate(args)
    except (OSError, ValueError) as exc:
        parser.exit(2, f"trajfm evaluate: error: {exc}\n")


def _evaluate(args) -> int:
    from trajfm.evaluate.suite import evaluate_model, metrics_table_text

    result = evaluate_model(
        args.model,
        args.data,
        format=args.format,
        kind=args.kind,
        options=_json_arg(args.reader_options, "--reader-options"),
        tasks=args.tasks,
        root=args.data_root,
        seed=args.seed,
        params=_task_params(args.params),
        window=args.window,
        fit_frac=args.fit_frac,
        out=args.out,
        device=args.device,
    )
    acc = result["accounting"]
    m = result["model"]
    print(f"model {m['uri']} (preset {m['preset']}{', version ' + str(m['version']) if m.get('version') else ''})")
    ing, pre = acc.get("ingest"), acc["preprocess"]
    read = (
        f"read {ing['rows_read']:,} = kept {ing['rows_kept']:,} + quarantined {ing['rows_quarantined']:,}; "
        if ing
        else ""
    )
    print(
        f"data  {read}preprocess in {pre['rows_in']:,} = kept {pre['rows_kept']:,} "
        f"+ quarantined {pre['rows_quarantined']:,};"
        f" windows fit/eval {result['split']['fit_windows']}/{result['split']['eval_windows']}"
    )
    print(metrics_table_text(result["metrics"]))
    print(f"wrote {args.out}")
    return 0


def _protocol(args) -> int:
    from trajfm.evaluate.suite import write_json
    from trajfm.evaluate.transfer import run_protocol, summary_text

    result = run_protocol(
        args.protocol,
        args.preset,
        epochs=args.epochs,
        max_steps=args.max_steps,
        root=args.data_root,
        fine_tune_steps=args.fine_tune_steps,
        fine_tune_lr=args.fine_tune_lr,
        seeds=_seeds(args.seeds),
        batch_size=args.batch_size,
        device=args.device,
        tasks=args.tasks,
        params=_task_params(args.params),
        base_model=args.base_model,
        train_sources=args.train_sources,
        in_domain=args.in_domain,
    )
    from pathlib import Path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    print(f"protocol {result['protocol']}: preset {result['preset']}, seeds {result['seeds']}")
    print(summary_text(result["summary"]))
    for predictor, bars in result["bars"].items():
        gain, worse = bars["ade_m@10_vs_constant_velocity"], bars["worse_than_constant_velocity_at_steps"]
        print(
            f"zero-shot bars, {predictor}: ADE@10 {100 * gain:+.1f}% vs constant velocity (bar +25%), "
            f"worse than constant velocity at steps {worse or 'none'} (bar: none)"
        )
    print(f"wrote {args.out}")
    return 0
