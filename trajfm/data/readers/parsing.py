"""Delimited text to columns: splitting lines into fields, quoted records, field counts.

The fast path (``fast_fields``: Arrow's CSV reader on a whole chunk) is taken only when it cannot
change the result; otherwise lines are split one by one (``split_fields``, ``columns_of``) and
lines with the wrong field count, unbalanced quotes, line breaks inside quotes or non-UTF-8 bytes
are flagged ``parse_error`` (``field_count_problems``, ``flag_multiline_records``,
``flag_undecodable``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from trajfm.data.readers.lines import LineChunk, gc_paused


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
    if chunk.is_decoded or not data or b'"' in data or len(delimiter) != 1:
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


def raw_lines(lines: list[str]):
    """``raw_of`` for ``split_checked`` when row i is line i of ``lines``."""
    return lambda rows: [lines[i] for i in rows]
