"""Benchmarks, outside the library: ``trajfm bench NAME --out FILE.json [ARGS]`` or, the same run,
``python -m benchmarks.NAME --out FILE.json [ARGS]``. Each module has ``main(out: Path, argv)``
that writes the JSON results and a markdown table beside it; results are committed under
``benchmarks/results/``. The library never imports this package (``trajfm bench`` loads a module
by name)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def run_as_script(main: Callable[..., int], prog: str, argv: list[str] | None = None) -> int:
    """``python -m benchmarks.NAME --out FILE [ARGS]``: ``--out`` goes to ``main(out, argv)``, the
    other arguments (``--help`` included) to the benchmark's own parser."""
    first = argparse.ArgumentParser(prog=prog, add_help=False)
    first.add_argument("--out", type=Path, default=None)
    known, rest = first.parse_known_args(argv)
    if known.out is None and not {"-h", "--help"} & set(rest):
        first.error("the following arguments are required: --out FILE.json")
    return int(main(known.out, rest) or 0)
