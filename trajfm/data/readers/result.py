"""What every reader returns: ``ReadResult`` (canonical points plus the quarantine of the rows
it rejected) and the helpers that build its tables.

A reader never raises on bad content and never drops a row silently: each point it reads either
becomes a row of ``ReadResult.points`` (canonical columns, see ``trajfm.data.schema``) or a row of
``ReadResult.quarantine`` (``file, line, raw, reason, detail``) with a reason code from
``schema.REASONS``. ``rows_read == len(points) + len(quarantine)`` always holds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.schema import REASONS, empty_points
from trajfm.store import redact_url

QUARANTINE_FILE_COLUMNS = ["file", "line", "raw", "reason", "detail"]
RAW_MAX_CHARS = 500  # raw text kept per quarantined row; enough to see what went wrong


@dataclass
class ReadResult:
    """One file (or one chunk of it) read into canonical points plus the rows it rejected.

    ``points``: canonical columns (``schema.POINT_COLUMNS``, lon/lat WGS84 degrees, ``t``
    ``datetime64[ns, UTC]``) in file order, plus optional ``sog`` (knots) / ``cog`` (degrees) /
    ``alt`` (metres) / ``mode``.
    ``quarantine``: ``file, line (1-based), raw (<= 500 chars), reason, detail``.
    ``rows_read``: points met in the file, kept or not.
    ``time_reversals``: kept fixes earlier than the previous kept fix of the same track in file
    order (kept: ingest sorts each track by time; preprocessing judges them).
    """

    points: pd.DataFrame
    quarantine: pd.DataFrame
    rows_read: int
    path: Path | str
    format: str
    notes: list[str] = field(default_factory=list)
    time_reversals: int = 0

    @property
    def rows_kept(self) -> int:
        return int(len(self.points))

    @property
    def rows_quarantined(self) -> int:
        return int(len(self.quarantine))

    def quarantined_by_reason(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        counts = self.quarantine["reason"].value_counts()
        return {str(k): int(v) for k, v in sorted(counts.items())}

    def check_accounting(self) -> None:
        """Raise if a row went missing: rows read must equal rows kept plus rows quarantined."""
        if self.rows_read != self.rows_kept + self.rows_quarantined:
            raise AssertionError(
                f"{self.path}: rows_read {self.rows_read} != kept {self.rows_kept} "
                f"+ quarantined {self.rows_quarantined}"
            )

    @classmethod
    def concat(cls, chunks: list["ReadResult"], path: Path | str, format: str) -> "ReadResult":
        """One result from a file's chunks (points and quarantine in file order)."""
        if len(chunks) == 1:
            only = chunks[0]
            return cls(only.points, only.quarantine, only.rows_read, path, format, only.notes, only.time_reversals)
        points = concat_points([c.points for c in chunks])
        q_frames = [c.quarantine for c in chunks if len(c.quarantine)]
        quarantine = pd.concat(q_frames, ignore_index=True) if q_frames else empty_quarantine()
        notes = [n for c in chunks for n in c.notes]
        result = cls(
            points,
            quarantine,
            sum(c.rows_read for c in chunks),
            path,
            format,
            notes,
            sum(c.time_reversals for c in chunks),
        )
        result.check_accounting()
        return result


def concat_points(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate point frames of one or more chunks; ``kind``/``source`` stay categorical."""
    frames = [f for f in frames if len(f)] or frames[:1]
    if not frames:
        return empty_points()
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    out = pd.concat(frames, ignore_index=True)
    for col in ("kind", "source"):
        if not isinstance(out[col].dtype, pd.CategoricalDtype):
            out[col] = out[col].astype("string").astype("category")
    return out


_EMPTY_QUARANTINE: pd.DataFrame | None = None


def empty_quarantine() -> pd.DataFrame:
    """A zero-row quarantine table (a copy of one built once: pandas string columns are slow to make)."""
    global _EMPTY_QUARANTINE
    if _EMPTY_QUARANTINE is None:
        _EMPTY_QUARANTINE = pd.DataFrame(
            {
                "file": pd.Series(dtype="string"),
                "line": pd.Series(dtype="int64"),
                "raw": pd.Series(dtype="string"),
                "reason": pd.Series(dtype="string"),
                "detail": pd.Series(dtype="string"),
            }
        )
    return _EMPTY_QUARANTINE.copy()


def quarantine_frame(file: str, line, raw, reason, detail) -> pd.DataFrame:
    """Build a quarantine table; ``raw`` is truncated to ``RAW_MAX_CHARS`` characters."""
    raw = [r if len(r) <= RAW_MAX_CHARS else r[:RAW_MAX_CHARS] for r in raw]
    unknown = set(reason) - set(REASONS)
    if unknown:
        raise ValueError(f"unknown quarantine reason codes {sorted(unknown)}")
    n = len(raw)
    file = redact_url(file)  # the quarantine table is written under the data root
    return pd.DataFrame(
        {
            "file": pd.Series([file] * n, dtype="string"),
            "line": pd.Series(np.asarray(line, dtype=np.int64)),
            "raw": pd.Series(raw, dtype="string"),
            "reason": pd.Series(list(reason), dtype="string"),
            "detail": pd.Series(list(detail), dtype="string"),
        }
    )


@functools.lru_cache(maxsize=256)
def _one_category(value: str) -> pd.CategoricalDtype:
    return pd.CategoricalDtype(pd.Index([value], dtype="str"))


def constant_category(value: str, n: int) -> pd.Categorical:
    """``n`` copies of ``value`` as a categorical, without building an n-element list."""
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), dtype=_one_category(value))


def count_time_reversals(traj_id: pd.Series, t: pd.Series, previous: tuple | None) -> tuple[int, tuple | None]:
    """Fixes earlier than the fix before them of the same track, in file order.

    ``previous`` is ``(traj_id, t)`` of the last fix of the preceding chunk; returns the count
    and the new last fix.
    """
    n = len(traj_id)
    if n == 0:
        return 0, previous
    ids = traj_id.to_numpy(dtype=object)
    ts = t.to_numpy(dtype="datetime64[ns]")
    count = int(((ids[1:] == ids[:-1]) & (ts[1:] < ts[:-1])).sum())
    if previous is not None and previous[0] == ids[0] and ts[0] < previous[1]:
        count += 1
    return count, (ids[-1], ts[-1])
