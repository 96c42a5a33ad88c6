"""Readers, one per source format, behind one call: ``read_file(path, format=None)``.

Every reader has the signature ``reader(path, kind=...) -> ReadResult`` (see ``base.py``): canonical
points (lon/lat WGS84 degrees, ``t`` ``datetime64[ns, UTC]``) plus a quarantine table, with
``rows_read == len(points) + len(quarantine)``.

Format detection by extension: ``.traj`` -> ``tracktable``; ``.csv`` whose header names the
MarineCadastre columns (BaseDateTime, LON, LAT, MMSI) -> ``marinecadastre``. Anything else raises
``ValueError`` naming the file; pass ``format=`` to force a reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from trajfm.data.readers.base import QUARANTINE_FILE_COLUMNS, ReadResult
from trajfm.data.readers.marinecadastre import looks_like_marinecadastre, read_marinecadastre
from trajfm.data.readers.tracktable import read_tracktable

Reader = Callable[..., ReadResult]

READERS: dict[str, Reader] = {
    "tracktable": read_tracktable,
    "marinecadastre": read_marinecadastre,
}

__all__ = ["READERS", "QUARANTINE_FILE_COLUMNS", "ReadResult", "detect_format", "read_file", "register_reader"]


# An empty file has no header to detect from; its extension picks a reader that reads zero rows.
_READER_OF_EMPTY = {".traj": "tracktable", ".csv": "marinecadastre"}


def register_reader(name: str, reader: Reader) -> None:
    """Add a reader for a new source format (``reader(path, kind=...) -> ReadResult``)."""
    READERS[name] = reader


def _first_line(path: Path, limit: int = 65536) -> str:
    with open(path, "rb") as f:
        head = f.read(limit)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def detect_format(path: str | Path) -> str:
    """Name of the reader for ``path``, from its extension and (for CSV) its header line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".traj":
        return "tracktable"
    if suffix == ".csv":
        first = _first_line(path)
        if looks_like_marinecadastre(first):
            return "marinecadastre"
        raise ValueError(
            f"{path}: CSV header is not a known format (MarineCadastre needs BaseDateTime, LON, LAT, "
            f"MMSI); first line: {first[:120]!r}. Pass format= one of {sorted(READERS)}"
        )
    raise ValueError(f"{path}: unknown file format {suffix!r}; pass format= one of {sorted(READERS)}")


def read_file(path: str | Path, format: str | None = None, kind: str = "vessel") -> ReadResult:
    """Read one file with the reader named ``format`` (detected when ``None``).

    ``kind`` is the mover kind written to every point (the AIS sources are vessels). An empty file
    reads zero rows. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an
    unknown format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if format is None:
        empty_ok = path.stat().st_size == 0 and path.suffix.lower() in _READER_OF_EMPTY
        format = _READER_OF_EMPTY[path.suffix.lower()] if empty_ok else detect_format(path)
    if format not in READERS:
        raise ValueError(f"{path}: unknown format {format!r}; known: {sorted(READERS)}")
    return READERS[format](path, kind=kind)
