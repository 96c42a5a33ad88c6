"""What every reader returns, how it streams a file, and the vectorized checks on text fields.

A reader never raises on bad content and never drops a row silently: each point it reads either
becomes a row of ``ReadResult.points`` (canonical columns, see ``trajfm.data.schema``) or a row of
``ReadResult.quarantine`` (``file, line, raw, reason, detail``) with a reason code from
``schema.REASONS``. ``rows_read == len(points) + len(quarantine)`` always holds. A file that is not
the format at all (no header, a required column missing) raises one ``SourceFormatError`` naming
the file and line.

Streaming: readers take a ``SourceFile`` (a local path or any fsspec URL, compressed or not) and
yield one ``ReadResult`` per chunk of at most ``chunk_rows`` lines and about ``chunk_bytes`` bytes
of text (``iter_line_chunks``), so memory is bounded by the chunk, not by the file.

Checks run on whole columns (numpy/pandas), never a Python call per point, so a reader handles
hundreds of thousands of fixes in well under a second of parsing.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterator

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from trajfm.data.schema import MAX_TIME_AHEAD, MIN_TIME, REASONS

QUARANTINE_FILE_COLUMNS = ["file", "line", "raw", "reason", "detail"]
RAW_MAX_CHARS = 500  # raw text kept per quarantined row; enough to see what went wrong

DEFAULT_CHUNK_ROWS = 200_000  # lines of text (or Parquet rows) per chunk
DEFAULT_CHUNK_BYTES = 32 << 20  # bytes of text per chunk, whatever the line count
MIN_BLOCK_BYTES = 1 << 16
MAX_BLOCK_BYTES = 8 << 20

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}

_NAN_LITERALS = frozenset({"nan", "+nan", "-nan"})
# A timestamp must at least hold a date and an hour:minute; stops ISO-8601 fallback parsing from
# reading a stray number ("2020", a longitude shifted into the time column) as a year.
_DATETIME_SHAPE = re.compile(r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")
# A UTC offset (or Z) at the end of a timestamp: "…:45Z", "…:45+08:00", "…:45.123-0500".
_UTC_OFFSET = r"\d(?:\.\d+)?\s*(?:[zZ]|[+-]\d{2}(?::?\d{2})?)\s*$"


class SourceFormatError(ValueError):
    """A file is not in the format its reader expects: one error naming the file and line."""

    def __init__(self, file: str, line: int | None, message: str):
        from trajfm.store import redact_url

        self.file, self.line = redact_url(str(file)), line  # no credentials of a URL in messages
        where = f"{self.file}, line {line}" if line is not None else self.file
        super().__init__(f"{where}: {message}")


# ---------------------------------------------------------------------------------------------
# Where the bytes come from


@dataclass(frozen=True)
class SourceFile:
    """One input file: a local path or an fsspec URL (``memory://``, ``s3://``, ...).

    ``file://`` URLs become local paths. A ``.gz``/``.bz2``/``.xz``/``.zst`` suffix is
    decompressed on the fly; ``name``/``suffix``/``stem`` describe the file inside.
    """

    url: str

    @classmethod
    def of(cls, path: "str | os.PathLike | SourceFile") -> "SourceFile":
        if isinstance(path, SourceFile):
            return path
        text = os.fspath(path)
        if text.startswith("file://"):
            text = text[len("file://") :]
        return cls(text)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url

    @property
    def _posix(self) -> PurePosixPath:
        path = self.url.split("://", 1)[1] if not self.is_local else Path(self.url).as_posix()
        return PurePosixPath(path)

    @property
    def compression(self) -> str | None:
        return COMPRESSIONS.get(self._posix.suffix.lower())

    @property
    def name(self) -> str:
        """File name without a compression suffix (``a.csv.gz`` -> ``a.csv``)."""
        name = self._posix.name
        return name[: -len(self._posix.suffix)] if self.compression else name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix.lower()

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def folders(self) -> tuple[str, ...]:
        """Names of the folders above the file, outermost first."""
        return tuple(self._posix.parent.parts)

    def display(self) -> "Path | str":
        """What ``ReadResult.path`` holds: a ``Path`` for a local file, else the URL."""
        return Path(self.url) if self.is_local else self.url

    def __str__(self) -> str:
        return self.url

    @contextlib.contextmanager
    def open(self) -> Iterator[IO[bytes]]:
        """Binary file object (decompressed when the name says so).

        A truncated or corrupt compressed file raises ``SourceFormatError`` naming this file
        (the decompressor's own ``EOFError``/``BadGzipFile`` names no file, and a caller that
        read a directory would otherwise only know the directory).
        """
        if self.is_local and self.compression is None:
            with open(self.url, "rb") as f:
                yield f
            return
        import fsspec

        try:
            with fsspec.open(self.url, "rb", compression=self.compression) as f:
                yield f
        except Exception as exc:
            if self.compression is None or not _is_decompression_error(exc):
                raise
            raise SourceFormatError(
                self.url, None, f"truncated or corrupt {self.compression} file ({type(exc).__name__}: {exc})"
            ) from None

    def exists(self) -> bool:
        if self.is_local:
            return Path(self.url).is_file()
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url)
        return fs.isfile(path)

    def head(self, limit: int = 65536) -> bytes:
        """The first ``limit`` bytes (decompressed)."""
        with self.open() as f:
            return f.read(limit)


def _is_decompression_error(exc: BaseException) -> bool:
    """True for what gzip/bz2/lzma/zstd raise on a truncated or corrupt stream."""
    import gzip
    import lzma
    import zlib

    if isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)):
        return True
    if type(exc).__module__.startswith(("zstandard", "compression.zstd")):
        return True
    return type(exc) is OSError and "invalid data stream" in str(exc).lower()  # bz2


# ---------------------------------------------------------------------------------------------
# What a reader returns


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
    from trajfm.data.schema import empty_points

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
    from trajfm.store import redact_url

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


# ---------------------------------------------------------------------------------------------
# Lines of text, in bounded chunks


class LineChunk:
    """Consecutive lines of a file, held as bytes and decoded on first use.

    ``data`` is the lines joined by ``\\n`` (no final newline); ``lines[i]`` is line ``start + i``
    (1-based) as text without its line ending; ``undecodable[i]`` is True when line ``i`` held
    bytes that are not UTF-8 (they became U+FFFD, so the rest of the line can still be shown).
    """

    def __init__(self, start: int, data: bytes, lines: list[str] | None = None, undecodable: np.ndarray | None = None):
        self.start = start
        self.data = data
        self._lines = lines
        self._undecodable = undecodable
        self.n = len(lines) if lines is not None else data.count(b"\n") + 1

    @classmethod
    def from_lines(cls, start: int, lines: list[str], undecodable: np.ndarray) -> "LineChunk":
        return cls(start, b"", list(lines), np.asarray(undecodable, dtype=bool))

    def _decode(self) -> None:
        if self._lines is None:
            self._lines, self._undecodable = _decode_block(self.data)

    @property
    def lines(self) -> list[str]:
        self._decode()
        return self._lines

    @property
    def undecodable(self) -> np.ndarray:
        self._decode()
        return self._undecodable

    def first_line(self) -> str:
        """The chunk's first line as text, without decoding the rest."""
        if self._lines is not None:
            return self._lines[0]
        end = self.data.find(b"\n")
        return self.data[: end if end >= 0 else len(self.data)].decode("utf-8", errors="replace").rstrip("\r")

    def tail(self, skip: int) -> "LineChunk":
        """The chunk without its first ``skip`` lines (``0 < skip < len(self)``)."""
        if self._lines is None:
            at = int(_newlines(self.data)[skip - 1])
            return LineChunk(self.start + skip, self.data[at + 1 :])
        return LineChunk.from_lines(self.start + skip, self.lines[skip:], self.undecodable[skip:])

    def __len__(self) -> int:
        return self.n

    @property
    def line_numbers(self) -> np.ndarray:
        return np.arange(self.start, self.start + self.n, dtype=np.int64)


def _decode_block(data: bytes) -> tuple[list[str], np.ndarray]:
    """Lines of ``data`` (split at ``\\n``; every piece is a line, the last included)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        lines, bad = [], []
        for piece in data.split(b"\n"):
            try:
                lines.append(piece.decode("utf-8"))
                bad.append(False)
            except UnicodeDecodeError:
                lines.append(piece.decode("utf-8", errors="replace"))
                bad.append(True)
        return [ln.rstrip("\r") for ln in lines], np.asarray(bad, dtype=bool)
    lines = text.split("\n")
    if "\r" in text:
        lines = [ln.rstrip("\r") for ln in lines]
    return lines, np.zeros(len(lines), dtype=bool)


def block_size(chunk_rows: int, chunk_bytes: int) -> int:
    """Bytes read at once: about one chunk's worth, within [64 KiB, 8 MiB]."""
    return int(min(max(chunk_rows * 64, MIN_BLOCK_BYTES), max(chunk_bytes, MIN_BLOCK_BYTES), MAX_BLOCK_BYTES))


def _newlines(data: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)


def iter_line_chunks(
    source: SourceFile,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[LineChunk]:
    """Read ``source`` as lines, yielding chunks of at most ``chunk_rows`` lines.

    A chunk also ends before it exceeds ``chunk_bytes`` (unless one line is longer). Memory: a
    block of bytes (see ``block_size``) plus one chunk; a single line longer than that is held
    whole. A UTF-8 byte-order mark is dropped; ``\\r\\n`` endings are accepted; a last line
    without a final newline is still a line.
    """
    if chunk_rows < 1 or chunk_bytes < 1:
        raise ValueError(f"chunk_rows and chunk_bytes must be >= 1, got {chunk_rows}, {chunk_bytes}")
    block = block_size(chunk_rows, chunk_bytes)
    pending = b""  # whole lines joined by newlines
    pending_lines = 0
    start = 1

    def cut(final: bool) -> Iterator[LineChunk]:
        nonlocal pending, pending_lines, start
        while pending_lines and (final or pending_lines > chunk_rows or len(pending) > chunk_bytes):
            if pending_lines <= chunk_rows and len(pending) <= chunk_bytes:
                chunk, pending, n = pending, b"", pending_lines  # only when final
            else:
                nl = _newlines(pending)
                n = min(chunk_rows, pending_lines)
                fits = int(np.searchsorted(nl, chunk_bytes, side="right"))  # lines ending within the cap
                n = max(1, min(n, fits))
                at = int(nl[n - 1]) if n - 1 < len(nl) else len(pending)
                chunk, pending = pending[:at], pending[at + 1 :]
            pending_lines -= n
            yield LineChunk(start, chunk)
            start += n

    with source.open() as f:
        carry = b""
        first = True
        while True:
            data = f.read(block)
            eof = not data
            data = carry + data
            if first:
                if len(data) < 3 and not eof:
                    carry = data  # a short read: wait for enough bytes to see a byte-order mark
                    continue
                first = False
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
            if eof:
                complete, carry = data, b""
                if not complete:
                    break
            else:
                at = data.rfind(b"\n")
                if at < 0:
                    carry = data
                    continue
                complete, carry = data[:at], data[at + 1 :]
            pending = pending + b"\n" + complete if pending_lines else complete
            pending_lines += complete.count(b"\n") + 1
            yield from cut(final=False)
            if eof:
                break
    yield from cut(final=True)


@dataclass
class FastTable:
    """Columns of a chunk parsed by Arrow's CSV reader (see ``fast_fields``).

    ``columns[j]``: field ``j`` of every non-blank line (float64 for the numeric fields asked
    for, else object strings); ``line_numbers``: 1-based line of each row; ``raw_of(rows)``: the
    text of those rows (for the quarantine).
    """

    columns: dict[int, np.ndarray]
    line_numbers: np.ndarray
    raw_of: Callable[[np.ndarray], list[str]]


def fast_fields(
    chunk: LineChunk, n_fields: int, wanted: list[int], numeric: tuple[int, ...] = (), delimiter: str = ","
) -> FastTable | None:
    """Parse a chunk of simple delimited lines with pandas' C parser, or ``None`` to say "use the
    line-by-line path".

    Only taken when it cannot change the result: the chunk is valid UTF-8, has no quote
    character, every non-blank line has exactly ``n_fields`` fields (counted on the bytes with
    numpy), and the ``numeric`` fields all parse as numbers (else the parser raises and the
    line-by-line path finds and quarantines the bad rows). Parsing is Arrow's CSV reader (one
    thread); its floats are correctly rounded, the same float64 as Python's ``float(text)``.
    """
    data = chunk.data
    if chunk._lines is not None or not data or b'"' in data or len(delimiter) != 1:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    arr = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], nl + 1))
    ends = np.concatenate((nl, [len(arr)]))
    cr = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
    ends_text = ends - cr
    non_blank = ends_text > starts
    if not non_blank.any():
        return None
    delims = np.flatnonzero(arr == ord(delimiter))
    counts = np.searchsorted(delims, ends_text) - np.searchsorted(delims, starts)
    if (counts[non_blank] != n_fields - 1).any():
        return None
    import io

    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{j}" for j in range(n_fields)]
    wanted = sorted(set(wanted))
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(column_names=names, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, quote_char=False, double_quote=False),
            convert_options=pacsv.ConvertOptions(
                include_columns=[names[j] for j in wanted],
                column_types={names[j]: pa.float64() if j in numeric else pa.string() for j in wanted},
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        return None  # text in a number, ...: the line-by-line path finds the rows
    if table.num_rows != int(non_blank.sum()) or any(table.column(names[j]).null_count for j in numeric if j in wanted):
        return None  # an empty or "nan" number is null here: the line-by-line path says which
    rows = np.flatnonzero(non_blank)
    columns = {
        j: table.column(names[j])
        .to_numpy(zero_copy_only=False)
        .astype(np.float64 if j in numeric else object, copy=False)
        for j in wanted
    }

    def raw_of(bad: np.ndarray) -> list[str]:
        return [data[starts[r] : ends_text[r]].decode("utf-8") for r in rows[bad]]

    return FastTable(columns, chunk.start + rows.astype(np.int64), raw_of)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building millions of small lists (no cycles are
    made; with it running, splitting 1M lines takes ~4x longer)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def split_fields(lines: list[str], delimiter: str = ",", quotechar: str = '"') -> list[list[str] | None]:
    """Split delimited lines into fields; a line with a quote goes through ``csv`` (strict).

    ``None`` for a line whose quotes do not balance. A quoted field never spans lines here (each
    line is one record), so a broken quote costs one row, not the rest of the file.
    """
    out: list[list[str] | None] = []
    with gc_paused():
        for ln in lines:
            if quotechar in ln:
                try:
                    out.append(next(csv.reader([ln], delimiter=delimiter, quotechar=quotechar, strict=True)))
                except (csv.Error, StopIteration):
                    out.append(None)
            else:
                out.append(ln.split(delimiter))
    return out


MAX_RECORD_LINES = 50  # a quoted field may hold this many line breaks before its quote is called broken


@dataclass
class OpenRecord:
    """A quoted field still open at the end of a chunk: the record's first line, lines used."""

    first_line: int
    lines: int


def _open_at_end(text: str, delimiter: str, quotechar: str) -> bool:
    """True when ``text`` ends inside a quoted field (its record goes on to the next line)."""
    try:
        next(csv.reader([text], delimiter=delimiter, quotechar=quotechar, strict=True))
    except csv.Error as exc:
        return "end of data" in str(exc)
    except StopIteration:
        return False
    return False


def multiline_records(
    lines: list[str],
    rows: list[list[str] | None],
    line_nos: np.ndarray,
    delimiter: str = ",",
    quotechar: str = '"',
    carried: OpenRecord | None = None,
) -> tuple[np.ndarray, np.ndarray, OpenRecord | None]:
    """Find CSV records whose quoted field holds a line break (``"a\nb",...`` is one record on
    two lines); ``split_fields`` reads a line at a time, so each of those lines would otherwise
    become a row of its own (the second one with a garbage id).

    ``rows`` is ``split_fields(lines)`` (``None``: quotes do not balance on that line, the only
    lines that can open such a record). A record closes on the first later line that ends its
    quoted field, within ``MAX_RECORD_LINES`` lines; a quote never closed that soon is a broken
    quote and costs its own line only. ``carried``: a record left open by the previous chunk.

    Returns ``(in_record, first_line, still_open)``: a mask of the lines that belong to a
    multi-line record, the 1-based first line of each one's record, and the record left open at
    the end of this chunk (or ``None``).
    """
    n = len(lines)
    in_record = np.zeros(n, dtype=bool)
    first = np.zeros(n, dtype=np.int64)

    def closing(start: int, budget: int) -> int | None:
        for j in range(start, min(n, start + budget)):
            if quotechar in lines[j] and not _open_at_end(quotechar + lines[j], delimiter, quotechar):
                return j
        return None

    i = 0
    if carried is not None:
        budget = MAX_RECORD_LINES - carried.lines
        j = closing(0, budget)
        if j is not None or n < budget:
            end = j if j is not None else n - 1
            in_record[: end + 1], first[: end + 1] = True, carried.first_line
            if j is None:
                return in_record, first, OpenRecord(carried.first_line, carried.lines + n)
            i = j + 1
    opened = [k for k in range(i, n) if rows[k] is None and _open_at_end(lines[k], delimiter, quotechar)]
    for k in opened:
        if k < i:
            continue  # inside the record found before
        j = closing(k + 1, MAX_RECORD_LINES - 1)
        if j is None and n - k < MAX_RECORD_LINES:
            in_record[k:], first[k:] = True, line_nos[k]
            return in_record, first, OpenRecord(int(line_nos[k]), n - k)
        if j is not None:
            in_record[k : j + 1], first[k : j + 1] = True, line_nos[k]
            i = j + 1
    return in_record, first, None


def flag_multiline_records(
    reason: np.ndarray, detail: np.ndarray, in_record: np.ndarray, first: np.ndarray, line_nos: np.ndarray
) -> None:
    """Quarantine every line of a record whose quoted field holds a line break (``parse_error``)."""
    for k in np.flatnonzero(in_record):
        reason[k] = "parse_error"
        detail[k] = (
            f"quoted field holds a line break: one record from line {first[k]}, quarantined whole "
            f"(this is line {line_nos[k]})"
        )


def columns_of(rows: list[list[str] | None], n_fields: int, wanted: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Columns ``wanted`` of rows that have exactly ``n_fields`` fields (``""`` in other rows).

    Returns the columns (object arrays) and the field count of each row (-1: unbalanced quotes).
    """
    with gc_paused():
        counts = np.fromiter((-1 if r is None else len(r) for r in rows), dtype=np.int64, count=len(rows))
        ok = counts == n_fields
        if ok.all():
            cols = list(zip(*rows)) if rows else [()] * n_fields
            return [np.asarray(cols[j], dtype=object) for j in wanted], counts
        out = [np.full(len(rows), "", dtype=object) for _ in wanted]
        good_rows = [r for r, g in zip(rows, ok) if g]
        if good_rows:
            cols = list(zip(*good_rows))
            for arr, j in zip(out, wanted):
                arr[ok] = np.asarray(cols[j], dtype=object)
    return out, counts


def field_count_problems(counts: np.ndarray, n_fields: int, what: str = "header has") -> tuple[np.ndarray, np.ndarray]:
    """``(reason, detail)`` arrays flagging rows with the wrong number of fields as ``parse_error``."""
    reason = np.full(len(counts), None, dtype=object)
    detail = np.full(len(counts), None, dtype=object)
    wrong = counts != n_fields
    if wrong.any():
        reason[wrong] = "parse_error"
        detail[wrong] = [
            "unbalanced quotes"
            if c < 0
            else f"{c} fields, {what} {n_fields} (wrong delimiter, truncated or shifted line?)"
            for c in counts[wrong]
        ]
    return reason, detail


def flag_undecodable(reason: np.ndarray, detail: np.ndarray, undecodable: np.ndarray) -> None:
    """Rows from lines with non-UTF-8 bytes are ``parse_error`` (unless already rejected)."""
    fresh = undecodable & pd.isna(reason)
    reason[fresh] = "parse_error"
    detail[fresh] = "line has non-UTF-8 bytes"


# ---------------------------------------------------------------------------------------------
# Times


_NS_FIRST = pd.Timestamp("1678-01-01", tz="UTC")  # datetime64[ns] holds 1677-09-21 .. 2262-04-11
_NS_LAST = pd.Timestamp("2262-01-01", tz="UTC")


def finest_times(t: pd.Series) -> pd.Series:
    """UTC times as ``datetime64[ns, UTC]`` when every one fits in nanoseconds (years 1678-2261),
    else ``datetime64[us, UTC]``: nanoseconds are kept (the contract's unit), an absurd year (a
    clock error, quarantined later as ``bad_time``) does not overflow."""
    t = pd.Series(t)
    if t.dt.tz is None:
        t = t.dt.tz_localize("UTC")
    valid = t.dropna()
    fits = valid.empty or (valid.min() >= _NS_FIRST and valid.max() < _NS_LAST)
    return t.astype("datetime64[ns, UTC]" if fits else "datetime64[us, UTC]")


def _put_times(out: pd.Series, index, parsed: pd.Series) -> pd.Series:
    """``out`` with ``parsed`` written at ``index``, in the finest unit that holds both."""
    parsed = finest_times(parsed)
    if out.dt.unit != parsed.dt.unit:
        out, parsed = out.astype("datetime64[us, UTC]"), parsed.astype("datetime64[us, UTC]")
    out[index] = parsed.array
    return out


def parse_time_utc(text: pd.Series, formats: tuple[str, ...]) -> pd.Series:
    """Parse timestamps to ``datetime64[ns, UTC]`` (NaT where unparseable), vectorized.

    Tries each strict ``formats`` entry in turn on what is still unparsed (fast C path; the first
    on the text as is, later ones on stripped text), then ISO-8601 for the rest if it looks like a
    date and time. Naive times are taken as UTC; times with an offset are converted to UTC.
    Nanoseconds are kept; only when a time lies outside what nanoseconds hold (an absurd year)
    is the unit microseconds (``finest_times``), so nothing overflows; callers range-check.
    """
    return _parse_time_utc(text, formats)[0]


def _parse_time_utc(text: ArrayLike, formats: tuple[str, ...]) -> tuple[pd.Series, np.ndarray]:
    """``parse_time_utc`` plus a mask of rows parsed by a strict format without ``%z`` (so
    certainly naive: no need to look for an offset in their text)."""
    arr = np.asarray(text, dtype=object)
    if formats and len(arr):
        # The common case: every row parses with the first format; one C call, no Series juggling.
        first = pd.to_datetime(arr, format=formats[0], utc=True, errors="coerce")
        if not first.isna().any():
            strict = "%z" not in formats[0] and "%Z" not in formats[0]
            return finest_times(pd.Series(first)), np.full(len(arr), strict, dtype=bool)
    text = pd.Series(arr, dtype=object)
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    naive = np.zeros(len(text), dtype=bool)
    todo = np.ones(len(text), dtype=bool)
    candidates = [(fmt, i > 0) for i, fmt in enumerate(formats)] + [("ISO8601", True)]
    for fmt, strip in candidates:
        if not todo.any():
            break
        rest = text[todo]
        if strip:
            rest = rest.str.strip()
        if fmt == "ISO8601":
            rest = rest[rest.str.match(_DATETIME_SHAPE).fillna(False).astype(bool).to_numpy()]
        if len(rest):
            parsed = pd.to_datetime(rest, format=fmt, utc=True, errors="coerce")
            out = _put_times(out, rest.index, pd.Series(parsed, index=rest.index))
            if fmt != "ISO8601" and "%z" not in fmt and "%Z" not in fmt:
                naive[rest.index[parsed.notna().to_numpy()]] = True
        todo = out.isna().to_numpy()
    return out, naive


def has_utc_offset(text: ArrayLike) -> np.ndarray:
    """True where a timestamp text ends in a UTC offset or ``Z``."""
    s = pd.Series(np.asarray(text, dtype=object), dtype=object)
    return s.str.contains(_UTC_OFFSET, regex=True).fillna(False).to_numpy(dtype=bool)


def check_timezone(timezone: str | None) -> None:
    """Raise ``ValueError`` (not a deep zoneinfo error) for a timezone name that does not exist."""
    if timezone is None:
        return
    try:
        pd.Timestamp("2000-01-01").tz_localize(timezone)
    except Exception as exc:  # zoneinfo, pytz and dateutil raise different types
        raise ValueError(f"unknown timezone {timezone!r} (use an IANA name such as 'Europe/London')") from exc


def wall_time_to_utc(wall: pd.Series, timezone: str) -> tuple[pd.Series, np.ndarray]:
    """Wall-clock times in ``timezone`` (held as if UTC) -> UTC instants.

    Returns the UTC times and a mask of local times that do not exist (skipped at a DST change) or
    happen twice (repeated at a DST change): those are NaT, to be quarantined, never guessed.
    """
    naive = pd.DatetimeIndex(wall).tz_localize(None)
    local = naive.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    dst = np.asarray(local.isna() & ~naive.isna(), dtype=bool)
    utc = finest_times(pd.Series(local.tz_convert("UTC"), index=wall.index))
    return utc, dst


def parse_times(
    text: ArrayLike, formats: tuple[str, ...], timezone: str | None = "UTC"
) -> tuple[pd.Series, np.ndarray]:
    """Parse timestamp text to ``datetime64[ns, UTC]`` (see ``parse_time_utc``); returns the times
    and a detail per row.

    Times with a UTC offset are converted with their own offset. Naive times are wall-clock
    times in ``timezone`` (``"UTC"``: already UTC); with ``timezone=None`` a naive time is not
    accepted (NaT, detail says to pass a timezone). ``detail`` is ``None`` except where a time
    was turned down for a reason other than "not parseable".
    """
    text = np.asarray(text, dtype=object)
    t, strict_naive = _parse_time_utc(text, formats)
    detail = np.full(len(text), None, dtype=object)
    if timezone in ("UTC", "utc", "Z") or not len(text):
        return t, detail
    naive = strict_naive.copy()
    unsure = t.notna().to_numpy() & ~strict_naive
    if unsure.any():
        naive[unsure] = ~has_utc_offset(text[unsure])
    if not naive.any():
        return t, detail
    if timezone is None:
        t[naive] = pd.NaT
        detail[naive] = "naive time (no UTC offset) and no timezone given; pass timezone="
        return t, detail
    if naive.all():
        t, dst = wall_time_to_utc(t, timezone)
    else:
        local, dst = wall_time_to_utc(t[naive], timezone)
        t = _put_times(t, t.index[naive], local)
    rows = np.flatnonzero(naive)[dst]
    detail[rows] = f"local time in {timezone} is skipped or repeated at a DST change"
    return t, detail


# ---------------------------------------------------------------------------------------------
# Fields -> fixes


def _numeric(values: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse to float64: (values, empty, unparseable). ``nan`` text and float NaN are parseable
    (a non-finite coordinate, not a missing one); ``None`` and blank text are empty.

    ``pd.to_numeric`` runs on the whole column; only its NaN results are looked at again.
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "fiu":
        n = len(arr)
        return arr.astype(np.float64), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    arr = np.asarray(values, dtype=object)
    out = pd.to_numeric(pd.Series(arr, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    empty = np.zeros(len(out), dtype=bool)
    unparseable = np.zeros(len(out), dtype=bool)
    for i in np.flatnonzero(np.isnan(out)):
        item = arr[i]
        if isinstance(item, str):
            word = item.strip().lower()
            empty[i] = word == ""
            unparseable[i] = word != "" and word not in _NAN_LITERALS
        elif isinstance(item, (float, np.floating)):
            pass  # a float NaN: a non-finite value, judged by the coordinate checks
        else:
            empty[i] = True
    return out, empty, unparseable


def numeric_optional(text: ArrayLike, name: str, reason: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """Parse an optional numeric column (sog, alt, ...): empty -> NaN; text quarantines the row."""
    values, _empty, unparseable = _numeric(text)
    fresh = unparseable & pd.isna(reason)
    reason[fresh] = "parse_error"
    detail[fresh] = f"{name} is not a number"
    return values


def _is_blank(text: np.ndarray) -> np.ndarray:
    return np.fromiter((not (isinstance(s, str) and s.strip()) for s in text), dtype=bool, count=len(text))


def _strip_ids(obj_id: ArrayLike) -> np.ndarray:
    """Ids as stripped strings (``""`` for a missing one); each distinct id is stripped once."""
    values = np.asarray(obj_id, dtype=object)
    try:
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    except TypeError:  # unhashable junk: strip one by one
        return np.asarray([s.strip() if isinstance(s, str) else "" for s in values], dtype=object)
    clean = np.asarray([u.strip() if isinstance(u, str) else "" for u in uniques] + [""], dtype=object)
    return clean[codes]  # code -1 (missing) takes the last entry, ""


def validate_fixes(
    obj_id: ArrayLike,
    t_text: ArrayLike,
    lon_text: ArrayLike,
    lat_text: ArrayLike,
    time_formats: tuple[str, ...] = (),
    pre_reason: np.ndarray | None = None,
    pre_detail: np.ndarray | None = None,
    obj_id_pattern: str | None = None,
    timezone: str | None = "UTC",
    t_parsed: pd.Series | None = None,
    t_detail: np.ndarray | None = None,
    min_time: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Check and parse the fields of n fixes at once (each argument: n strings, or n numbers).

    Returns ``(parsed, reason, detail)``: ``parsed`` has ``obj_id, t (datetime64[ns, UTC]), lon,
    lat`` (degrees) for every row (NaT/NaN where invalid); ``reason`` is an object array holding
    a ``schema.REASONS`` code for rejected rows and ``None`` for good ones; ``detail`` explains.

    Times: ``t_text`` is parsed with ``parse_times(t_text, time_formats, timezone)`` unless the
    reader already parsed them: then ``t_parsed`` (UTC, NaT where unparseable) with ``t_detail``
    (why, per row, or ``None``) is used and ``t_text`` only tells empty from unparseable.

    The first failing check names the reason, in this order: ``pre_reason`` from the reader
    (field count, undecodable bytes), ``missing_value``, ``parse_error`` (text in a number or an
    id not matching ``obj_id_pattern``), ``bad_time`` (unparseable), ``nonfinite_coord``,
    ``coord_out_of_range`` (|lat| > 90 or |lon| > 180), ``null_island`` (lon = lat = 0),
    ``bad_time`` (before ``schema.MIN_TIME``, or ``min_time`` when given, or more than
    ``schema.MAX_TIME_AHEAD`` from now).
    """
    n = len(obj_id)
    ids = _strip_ids(obj_id)
    t_text = np.asarray(t_text, dtype=object)
    reason = np.full(n, None, dtype=object) if pre_reason is None else np.asarray(pre_reason, dtype=object).copy()
    detail = np.full(n, None, dtype=object) if pre_detail is None else np.asarray(pre_detail, dtype=object).copy()

    unset = pd.isna(reason)

    def flag(mask: np.ndarray, code: str, text) -> None:
        new = mask & unset
        if new.any():
            reason[new] = code
            detail[new] = text if isinstance(text, str) else np.asarray(text, dtype=object)[new]
            unset[new] = False

    lon, lon_empty, lon_bad = _numeric(lon_text)
    lat, lat_empty, lat_bad = _numeric(lat_text)
    id_empty = ids == ""
    if t_parsed is None:
        t, t_why = parse_times(t_text, time_formats, timezone)
    else:
        t = finest_times(pd.Series(t_parsed).reset_index(drop=True))
        t_why = np.full(n, None, dtype=object) if t_detail is None else np.asarray(t_detail, dtype=object)
    t_nat = t.isna().to_numpy()
    t_empty = np.zeros(n, dtype=bool)
    t_empty[t_nat] = _is_blank(t_text[t_nat]) & pd.isna(t_why[t_nat])

    flag(id_empty, "missing_value", "object id is empty")
    flag(t_empty, "missing_value", "timestamp is empty")
    flag(lon_empty, "missing_value", "lon is empty")
    flag(lat_empty, "missing_value", "lat is empty")
    flag(lon_bad, "parse_error", "lon is not a number")
    flag(lat_bad, "parse_error", "lat is not a number")
    if obj_id_pattern is not None:
        bad_id = ~pd.Series(ids, dtype=object).str.fullmatch(obj_id_pattern).fillna(False).astype(bool).to_numpy()
        flag(bad_id & ~id_empty, "parse_error", f"object id does not match {obj_id_pattern}")

    explained = t_nat & ~t_empty & ~pd.isna(t_why)
    flag(explained, "bad_time", t_why)
    flag(t_nat & ~t_empty, "bad_time", "timestamp is not parseable")

    with np.errstate(invalid="ignore"):
        flag(~np.isfinite(lon) | ~np.isfinite(lat), "nonfinite_coord", "lon or lat is NaN or infinite")
        out_of_range = (np.abs(lat) > 90.0) | (np.abs(lon) > 180.0)
        flag(out_of_range, "coord_out_of_range", "lat outside [-90, 90] or lon outside [-180, 180]")
        flag((lon == 0.0) & (lat == 0.0), "null_island", "lon = lat = 0")

    latest = pd.Timestamp.now(tz="UTC") + MAX_TIME_AHEAD
    floor = MIN_TIME if min_time is None else min_time
    early = (t < floor).to_numpy(dtype=bool, na_value=False)
    late = (t > latest).to_numpy(dtype=bool, na_value=False)
    flag(early, "bad_time", f"timestamp before {floor.date()}")
    flag(late, "bad_time", f"timestamp more than {MAX_TIME_AHEAD} in the future")

    good = unset
    t_ns = pd.Series(pd.NaT, index=t.index, dtype="datetime64[ns, UTC]")
    if good.all():
        t_ns = t.astype("datetime64[ns, UTC]")
    else:
        t_ns[good] = t[good].astype("datetime64[ns, UTC]")
    parsed = pd.DataFrame({"obj_id": ids, "t": t_ns, "lon": lon, "lat": lat})
    return parsed, reason, detail


def split_checked(
    source_file: SourceFile,
    parsed: pd.DataFrame,
    reason: np.ndarray,
    detail: np.ndarray,
    traj_id: ArrayLike,
    kind: "str | ArrayLike",
    source: "str | ArrayLike",
    line: np.ndarray,
    raw_of: "callable",
    optional: dict[str, np.ndarray] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Checked rows -> (canonical points of the good rows, quarantine of the others).

    ``traj_id`` (full ids), ``kind``/``source`` (a string for every row, or one per row) and
    ``optional`` columns are per input row. ``raw_of(rows)`` returns the raw text of the given row
    indices (called for rejected rows only). ``line`` is each row's 1-based line number.
    """
    good = pd.isna(reason)
    all_good = bool(good.all())
    n_kept = int(good.sum())

    def take(values):
        arr = (
            values
            if isinstance(values, (np.ndarray, pd.api.extensions.ExtensionArray))
            else np.asarray(values, dtype=object)
        )
        return arr if all_good else arr[good]

    def category(value) -> pd.Categorical:
        if isinstance(value, str):
            return constant_category(value, n_kept)
        return pd.Categorical(pd.array(take(np.asarray(value, dtype=object)), dtype="string"))

    columns = {
        "traj_id": pd.array(take(np.asarray(traj_id, dtype=object)), dtype="string"),
        "obj_id": pd.array(take(parsed["obj_id"].to_numpy(dtype=object)), dtype="string"),
        "t": take(parsed["t"].array),
        "lon": take(parsed["lon"].to_numpy()),
        "lat": take(parsed["lat"].to_numpy()),
        "kind": category(kind),
        "source": category(source),
    }
    for name, values in (optional or {}).items():
        if name == "mode":
            columns[name] = pd.array(take(np.asarray(values, dtype=object)), dtype="string")
        else:
            columns[name] = take(np.asarray(values, dtype=np.float64))
    points = pd.DataFrame(columns)
    if all_good:
        return points, empty_quarantine()
    bad = np.flatnonzero(~good)
    quarantine = quarantine_frame(str(source_file), line[bad], raw_of(bad), reason[bad], detail[bad])
    return points, quarantine


# ---------------------------------------------------------------------------------------------
# Header lines


def header_then_chunks(
    source: SourceFile, chunk_rows: int, chunk_bytes: int
) -> tuple[tuple[int, str, bool] | None, Iterator[LineChunk]]:
    """Find the first non-blank line (the header) and return it with the chunks after it.

    Returns ``((line number, text, has non-UTF-8 bytes), chunks)``, or ``(None, empty)`` for a
    file with no non-blank line.
    """
    chunks = iter_line_chunks(source, chunk_rows, chunk_bytes)
    for chunk in chunks:
        at, text, bad = _first_non_blank(chunk)
        if at is None:
            continue
        header = (chunk.start + at, text, bad)
        rest = chunk.tail(at + 1) if at + 1 < len(chunk) else LineChunk.from_lines(chunk.start + at + 1, [], [])

        def after() -> Iterator[LineChunk]:
            if len(rest):
                yield rest
            yield from chunks

        return header, after()
    return None, iter(())


def _first_non_blank(chunk: LineChunk) -> tuple[int | None, str, bool]:
    """(index, text, has non-UTF-8 bytes) of the chunk's first non-blank line, decoding only it."""
    if chunk._lines is not None:
        at = next((i for i, ln in enumerate(chunk.lines) if ln.strip()), None)
        return (None, "", False) if at is None else (at, chunk.lines[at], bool(chunk.undecodable[at]))
    pos = 0
    for i in range(len(chunk)):
        end = chunk.data.find(b"\n", pos)
        end = len(chunk.data) if end < 0 else end
        raw = chunk.data[pos:end]
        if raw.strip():
            try:
                return i, raw.decode("utf-8").rstrip("\r"), False
            except UnicodeDecodeError:
                return i, raw.decode("utf-8", errors="replace").rstrip("\r"), True
        pos = end + 1
    return None, "", False


def non_blank(chunk: LineChunk) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Lines of a chunk that are not blank: (lines, 1-based line numbers, undecodable flags)."""
    with gc_paused():
        keep = np.fromiter((bool(ln) and not ln.isspace() for ln in chunk.lines), dtype=bool, count=len(chunk))
    numbers = chunk.line_numbers
    if keep.all():
        return chunk.lines, numbers, chunk.undecodable
    lines = [ln for ln, k in zip(chunk.lines, keep) if k]
    return lines, numbers[keep], chunk.undecodable[keep]


def raw_lines(lines: list[str]):
    """``raw_of`` for ``split_checked`` when row i is line i of ``lines``."""
    return lambda rows: [lines[i] for i in rows]


# ---------------------------------------------------------------------------------------------
# A format: how to read it, how to recognise it


@dataclass(frozen=True)
class Format:
    """A source format, as the registry knows it.

    ``iter_chunks(source: SourceFile, *, kind, source_tag, chunk_rows, chunk_bytes, **options)``
    yields one ``ReadResult`` per chunk. ``kind``: the default mover kind (``None``: the caller
    must give one). ``default_source(file)``: the ``source`` tag (default: the file stem).
    ``namespace(file)``: the prefix of the file's ``traj_id`` values; two files of one ingest must
    not share it (default: the file stem). Detection: a file with one of ``extensions`` is this
    format if ``sniff(first non-blank line)`` says so, or always when ``sniff`` is ``None``;
    never when ``detectable`` is False (the format needs options, e.g. a column mapping).
    ``options``: extra keyword options the reader accepts.

    Calling a ``Format`` reads the whole file: ``FORMAT(path, kind=...) -> ReadResult``.
    """

    name: str
    iter_chunks: "Callable[..., Iterator[ReadResult]]"
    extensions: tuple[str, ...] = ()
    kind: str | None = None
    default_source: "Callable[[SourceFile], str] | None" = None
    namespace: "Callable[[SourceFile], str] | None" = None
    sniff: "Callable[[str], bool] | None" = None
    options: tuple[str, ...] = ()
    description: str = ""
    detectable: bool = True

    def source_tag(self, file: SourceFile) -> str:
        return self.default_source(file) if self.default_source else file.stem

    def traj_namespace(self, file: SourceFile) -> str:
        return self.namespace(file) if self.namespace else file.stem

    def check_options(self, options: dict) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            accepted = sorted(self.options) or "none"
            raise ValueError(f"format {self.name!r} does not take option(s) {unknown}; it takes {accepted}")

    def chunks(
        self,
        path: "str | os.PathLike | SourceFile",
        kind: str | None = None,
        source: str | None = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        **options,
    ) -> Iterator[ReadResult]:
        """Read ``path`` chunk by chunk (each chunk's rows are accounted for on its own)."""
        self.check_options(options)
        file = SourceFile.of(path)
        kind = kind if kind not in (None, "") else self.kind
        tag = source if source not in (None, "") else self.source_tag(file)
        previous = None
        for chunk in self.iter_chunks(
            file, kind=kind, source_tag=tag, chunk_rows=int(chunk_rows), chunk_bytes=int(chunk_bytes), **options
        ):
            chunk.check_accounting()
            if len(chunk.points):
                chunk.time_reversals, previous = count_time_reversals(
                    chunk.points["traj_id"], chunk.points["t"], previous
                )
            yield chunk

    def read(self, path: "str | os.PathLike | SourceFile", **kwargs) -> ReadResult:
        """Read the whole file into one ``ReadResult`` (chunks concatenated in file order)."""
        file = SourceFile.of(path)
        return ReadResult.concat(list(self.chunks(file, **kwargs)), file.display(), self.name)

    def __call__(self, path, **kwargs) -> ReadResult:
        return self.read(path, **kwargs)
