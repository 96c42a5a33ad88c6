"""What a model benchmark run is asked to do: its ``Budget`` (how much work each part does), the
named budgets, the parts and datasets, and the command line (``python -m benchmarks.model``,
``trajfm bench model``) that chooses them. The benchmark itself: ``benchmarks.model``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_ROOT = Path(tempfile.gettempdir()) / "trajfm-bench-model"
ENV_BUDGET = "TRAJFM_BENCH_BUDGET"
ENV_PRESETS = "TRAJFM_BENCH_PRESETS"
ENV_PARTS = "TRAJFM_BENCH_PARTS"
PARTS = ("speed", "generation", "quality")
DATASETS = ("ais", "geolife")


@dataclass(frozen=True)
class Budget:
    """How much work each part does."""

    name: str
    ais_steps: int  # optimizer steps per preset on AIS
    geolife_steps: int  # optimizer steps per preset on GeoLife
    batch_size: int = 64  # windows per training step
    speed_batch: int = 64  # windows per timed training step
    speed_reps: int = 9  # timed steps per contender
    speed_warmup: int = 2
    gen_batch: int = 32  # rollouts at once in the KV-cache benchmark
    gen_reps: int = 3
    max_test_windows: int | None = None  # cap on forecast windows per dataset (None: all)
    threads: int = 1  # torch threads (1: steady on a shared machine)
    train_stride: int | None = None  # points between training window starts (None: 32, disjoint)
    seeds: tuple[int, ...] = (0,)  # training seeds per preset; errors are the mean over them
    ema_decay: float = 0.0  # > 0: every preset keeps and is judged by its weight average (TrainConfig.ema_decay)
    select_by: str = (
        "loss"  # the epoch kept: lowest validation loss, or "fde" (validation FDE, this benchmark's protocol)
    )


BUDGETS = {
    "quick": Budget(
        "quick",
        ais_steps=20,
        geolife_steps=10,
        speed_batch=16,
        speed_reps=3,
        speed_warmup=1,
        gen_batch=4,
        gen_reps=1,
        max_test_windows=128,
    ),
    "default": Budget("default", ais_steps=250, geolife_steps=125),
    "long": Budget("long", ais_steps=1000, geolife_steps=500),
    "full": Budget("full", ais_steps=3000, geolife_steps=1000, speed_reps=15, gen_reps=5),
}


def csv_list(text: str | None) -> list[str]:
    return [p.strip() for p in (text or "").split(",") if p.strip()]


def parse_options(
    argv: list[str] | None, description: str
) -> tuple[argparse.ArgumentParser, argparse.Namespace, Budget]:
    """The parsed command line and the budget it asks for (a usage error exits with status 2); the
    parser comes back too, to report the run's own refusals the same way."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model", description=description)
    parser.add_argument("--out", type=Path, default=None, help="JSON results file (a .md table is written beside it)")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default=os.environ.get(ENV_BUDGET, "default"))
    parser.add_argument("--root", default=None, help=f"data root for the pipeline stages (default {DEFAULT_ROOT})")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the budget's)")
    parser.add_argument(
        "--train-stride",
        type=int,
        default=None,
        help="points between training window starts (default 32: disjoint; e.g. 8 overlaps them)",
    )
    parser.add_argument(
        "--parts",
        default=os.environ.get(ENV_PARTS, ",".join(PARTS)),
        help=f"comma-separated subset of {','.join(PARTS)} (or ${ENV_PARTS})",
    )
    parser.add_argument(
        "--presets",
        default=os.environ.get(ENV_PRESETS),
        help=f"comma-separated presets (names or .json paths) for the quality part; tutorial "
        f"always comes with them (or ${ENV_PRESETS}; default: all bundled presets)",
    )
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated subset of ais,geolife")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds per preset (default 0); errors are their mean, "
        "with the standard deviation in the report",
    )
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="train every preset with a weight average (TrainConfig.ema_decay, e.g. 0.999) and judge it by that",
    )
    parser.add_argument(
        "--select",
        choices=("loss", "fde"),
        default="loss",
        help="the epoch each preset keeps: lowest validation loss, or lowest validation FDE at the "
        "longest horizon (TrainConfig.select_by)",
    )
    parser.add_argument("--fresh", action="store_true", help="start a new results file instead of merging into --out")
    args = parser.parse_args(argv or [])
    budget = BUDGETS[args.budget]
    try:
        seeds = tuple(int(s) for s in csv_list(args.seeds)) or budget.seeds
    except ValueError:
        parser.exit(2, f"{parser.prog}: error: --seeds takes comma-separated integers, not {args.seeds!r}\n")
    if len(set(seeds)) != len(seeds):
        parser.exit(2, f"{parser.prog}: error: --seeds repeats a seed: {args.seeds!r}\n")
    if not 0.0 <= args.ema < 1.0:
        parser.exit(2, f"{parser.prog}: error: --ema takes a decay in [0, 1), not {args.ema}\n")
    if args.threads or args.train_stride or seeds != budget.seeds or args.ema or args.select != budget.select_by:
        budget = Budget(
            **{
                **asdict(budget),
                "threads": args.threads or budget.threads,
                "train_stride": args.train_stride or budget.train_stride,
                "seeds": seeds,
                "ema_decay": args.ema,
                "select_by": args.select,
            }
        )
    return parser, args, budget
