"""The registry of source formats (``READERS``), format detection and the one call that reads a
file: ``read_file`` (whole) / ``iter_file`` (chunk by chunk).

Format detection (``format=None``) by extension, and for ``.csv``/``.txt`` by the first line (see
``trajfm.data.readers`` for the table); ``.parquet`` by its schema (the contract's columns ->
canonical). ``register_reader(name, reader)`` adds a format.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

from trajfm.data.readers.canonical import CANONICAL
from trajfm.data.readers.canonical import EXTENSIONS as PARQUET_EXTENSIONS
from trajfm.data.readers.canonical import missing_columns as canonical_missing_columns
from trajfm.data.readers.formats import Format
from trajfm.data.readers.generic import GENERIC
from trajfm.data.readers.geolife import GEOLIFE
from trajfm.data.readers.marinecadastre import MARINECADASTRE
from trajfm.data.readers.porto import PORTO
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile
from trajfm.data.readers.tdrive import TDRIVE
from trajfm.data.readers.tracktable import TRACKTABLE

Reader = Callable[..., ReadResult]

READERS: dict[str, Format] = {
    f.name: f for f in (TRACKTABLE, MARINECADASTRE, GEOLIFE, PORTO, TDRIVE, GENERIC, CANONICAL)
}


def register_reader(name: str, reader: "Reader | Format") -> None:
    """Add a reader for a new source format.

    ``reader`` is a ``Format`` (streaming, detectable), or a plain function
    ``reader(path, kind=...) -> ReadResult`` that reads a whole file at once.
    """
    if isinstance(reader, Format):
        READERS[name] = reader if reader.name == name else Format(**{**reader.__dict__, "name": name})
        return

    def whole_file(file: SourceFile, kind=None, source_tag=None, chunk_rows=None, chunk_bytes=None):
        yield reader(file.display(), kind=kind)

    READERS[name] = Format(name=name, iter_chunks=whole_file, description=getattr(reader, "__doc__", "") or "")


def known_extensions(format: str | None = None) -> tuple[str, ...]:
    """File extensions a directory scan picks up: those of ``format``, or of every format."""
    formats = [READERS[format]] if format else READERS.values()
    return tuple(sorted({ext for f in formats for ext in f.extensions}))


def _first_line(file: SourceFile, limit: int = 65536) -> str:
    text = file.head(limit).decode("utf-8", errors="replace").lstrip("\ufeff")
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def detect_format(path: "str | os.PathLike | SourceFile") -> str:
    """Name of the reader for ``path``, from its extension and (for text) its first line.

    An empty file gets the reader of its extension (it reads zero rows). Raises ``ValueError``
    naming the file when no reader recognises it.
    """
    file = SourceFile.of(path)
    candidates = [f for f in READERS.values() if file.suffix in f.extensions and f.detectable]
    if not candidates:
        raise ValueError(
            f"{file}: no reader recognises {file.suffix!r} files; pass format= one of {sorted(READERS)} "
            f"(the generic format also needs columns=)"
        )
    if file.suffix in PARQUET_EXTENSIONS:
        return _detect_parquet(file, candidates)
    first = _first_line(file)
    for fmt in candidates:
        if fmt.sniff is None or not first or fmt.sniff(first):
            return fmt.name
    hints = "; ".join(f"{f.name}: {f.description}" for f in candidates)
    raise ValueError(
        f"{file}: first line is not a known {file.suffix} format ({hints}); first line: {first[:120]!r}. "
        f"Pass format= one of {sorted(READERS)} (generic needs columns=)"
    )


def _detect_parquet(file: SourceFile, candidates: list[Format]) -> str:
    """Parquet is binary: recognised by its schema (the contract's columns -> canonical)."""
    missing = canonical_missing_columns(file)
    if not missing and any(f.name == CANONICAL.name for f in candidates):
        return CANONICAL.name
    raise ValueError(
        f"{file}: Parquet without the canonical columns (lacks {missing}); pass format='generic' with "
        f"columns= mapping the file's columns to traj_id/obj_id, t, lon, lat"
    )


def _resolve(path, format: str | None) -> tuple[SourceFile, Format]:
    file = SourceFile.of(path)
    if not file.exists():
        raise FileNotFoundError(f"no such file: {file}")
    if format is None:
        format = detect_format(file)
    if format not in READERS:
        raise ValueError(f"{file}: unknown format {format!r}; known: {sorted(READERS)}")
    return file, READERS[format]


def iter_file(
    path: "str | os.PathLike | SourceFile",
    format: str | None = None,
    kind: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    **options,
) -> Iterator[ReadResult]:
    """Read one file chunk by chunk: each ``ReadResult`` covers at most ``chunk_rows`` lines
    (Parquet: rows) and about ``chunk_bytes`` bytes of text, with its own accounting.

    ``options``: ``source`` (the ``source`` tag) and the format's own options (generic:
    ``columns``, ``timezone``, ``time_format``, ``delimiter``; tdrive: ``timezone``).
    """
    file, fmt = _resolve(path, format)
    return fmt.chunks(file, kind=kind, chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, **options)


def read_file(
    path: "str | os.PathLike | SourceFile",
    format: str | None = None,
    kind: str | None = None,
    **options,
) -> ReadResult:
    """Read one file with the reader named ``format`` (detected when ``None``).

    ``kind`` is the mover kind written to every point (default: the format's, e.g. ``vessel``
    for AIS, ``person`` for GeoLife). An empty file reads zero rows. Raises
    ``FileNotFoundError`` for a missing file, ``ValueError`` for an unknown format and
    ``SourceFormatError`` (a ``ValueError`` naming file and line) for a file that is not the format.
    """
    file, fmt = _resolve(path, format)
    return fmt.read(file, kind=kind, **options)
