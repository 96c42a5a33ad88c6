"""Progress bars for long work in a terminal (ingest, preprocessing, training, evaluation).

One rule for every bar: shown only when stderr is a terminal, never under ``CI=true`` (or any
true ``CI``) or ``TRAJFM_PROGRESS=0``; ``TRAJFM_PROGRESS=1`` forces them on. A bar writes to
stderr and leaves no line behind, so logs, pipes and Prefect's log capture see nothing of it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")


def progress_enabled(stream=None) -> bool:
    """Whether to draw progress bars on ``stream`` (default stderr) now."""
    forced = os.environ.get("TRAJFM_PROGRESS", "").strip().lower()
    if forced in ("0", "false", "no", "off"):
        return False
    if forced in _TRUE:
        return True
    if os.environ.get("CI", "").strip().lower() in _TRUE:
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_bar(total: int | None, desc: str, unit: str = "it", initial: int = 0):
    """A tqdm bar that follows ``progress_enabled`` (a disabled bar costs nothing)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        leave=False,
        disable=not progress_enabled(),
        file=sys.stderr,
        dynamic_ncols=True,
    )


def track(items: Iterable[T], desc: str, unit: str = "it", total: int | None = None) -> Iterator[T]:
    """``items`` with a progress bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.update(1)
