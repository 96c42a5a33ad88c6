"""Readers, one module per source format, behind one registry and one call: ``read_file``.

=================  ==========================  ==================================  ========
format             module                      files                               kind
=================  ==========================  ==================================  ========
``tracktable``     ``tracktable.py``           ``.traj`` (tracktable-data AIS)     vessel
``marinecadastre`` ``marinecadastre.py``       ``.csv`` with MarineCadastre header vessel
``geolife``        ``geolife.py``              ``.plt`` in ``USER/Trajectory/``    person
``porto``          ``porto.py``                ``.csv`` with TRIP_ID, POLYLINE     vehicle
``tdrive``         ``tdrive.py``               ``.txt``: ``id,datetime,lon,lat``   vehicle
``generic``        ``generic.py``              ``.csv``/``.parquet`` + ``columns`` (given)
``canonical``      ``canonical.py``            ``.parquet`` with the contract columns (rows')
=================  ==========================  ==================================  ========

Every reader turns a file (a local path or any fsspec URL; ``.gz``/``.bz2``/``.xz`` are
decompressed) into canonical points (lon/lat WGS84 degrees, ``t`` ``datetime64[ns, UTC]``) plus a
quarantine table, with ``rows_read == len(points) + len(quarantine)``, streaming in chunks of at
most ``chunk_rows`` lines (``iter_file``) so memory does not grow with the file.
``iter_sources`` does the same for directories, globs and lists of them (``sources.py``).

API: ``read_file(path, format=None, kind=None, **options) -> ReadResult``;
``iter_file(path, ..., chunk_rows=, chunk_bytes=)`` and ``iter_sources(sources, ...)`` yield one
``ReadResult`` per chunk; ``READERS[name]`` is the ``Format`` (``.read``, ``.chunks``);
``register_reader(name, reader)`` adds one.

Format detection (``format=None``) by extension, and for ``.csv``/``.txt`` by the first line:
``.traj`` -> tracktable, ``.plt`` -> geolife, ``.csv`` naming BaseDateTime/LON/LAT/MMSI ->
marinecadastre, ``.csv`` naming TRIP_ID/POLYLINE -> porto, ``.txt`` whose first line is
``id,YYYY-MM-DD HH:MM:SS,lon,lat`` -> tdrive; ``.parquet`` by its schema: the contract's columns
(``traj_id, obj_id, t, lon, lat, kind, source``) -> canonical, other Parquet is not detected (it
needs the generic reader and a column mapping). Anything else (e.g. the generic format, which needs
a column mapping) raises ``ValueError`` naming the file; pass ``format=`` to choose a reader.
"""

from __future__ import annotations

from trajfm.data.readers.formats import Format
from trajfm.data.readers.marinecadastre import read_marinecadastre
from trajfm.data.readers.registry import READERS, detect_format, iter_file, known_extensions, read_file, register_reader
from trajfm.data.readers.result import QUARANTINE_FILE_COLUMNS, ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError
from trajfm.data.readers.sources import Source, iter_sources, resolve_sources
from trajfm.data.readers.tracktable import read_tracktable

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_CHUNK_ROWS",
    "Format",
    "QUARANTINE_FILE_COLUMNS",
    "READERS",
    "ReadResult",
    "Source",
    "SourceFile",
    "SourceFormatError",
    "detect_format",
    "iter_file",
    "iter_sources",
    "known_extensions",
    "read_file",
    "read_marinecadastre",
    "read_tracktable",
    "register_reader",
    "resolve_sources",
]
