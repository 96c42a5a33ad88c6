"""Which files a list of sources names: files, directories, glob patterns and fsspec URLs.

``resolve_sources(["data/geolife", "s3://bucket/ais/*.csv", "memory://x/1.txt"])`` returns the
files to read, each with the reader chosen for it, plus the files a directory scan or a glob
skipped (and why); ``iter_sources`` reads them all, chunk by chunk.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trajfm.data.readers.registry import READERS, detect_format, known_extensions
from trajfm.data.readers.result import ReadResult
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile, SourceFormatError
from trajfm.store import redact_url

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Source:
    """One file to read and the reader chosen for it."""

    file: SourceFile
    format: str


def _scan_suffix_ok(url: str, extensions: tuple[str, ...]) -> bool:
    return SourceFile.of(url).suffix in extensions and not os.path.basename(url.rstrip("/")).startswith(".")


def _expand(src: str | os.PathLike, extensions: tuple[str, ...]) -> tuple[list[str], bool]:
    """Files named by one source: ``(urls, scanned)``; ``scanned`` when it was a directory or glob."""
    file = SourceFile.of(src)
    text = file.url
    has_glob = any(c in text for c in _GLOB_CHARS)
    if file.is_local:
        local = os.path.expanduser(text)
        if has_glob:
            found = [p for p in glob.glob(local, recursive=True) if os.path.isfile(p)]
            if not found:
                raise FileNotFoundError(f"source matches no files: {redact_url(str(src))}")
            return [str(Path(p).resolve()) for p in found if _scan_suffix_ok(p, extensions)], True
        path = Path(local).resolve()
        if path.is_dir():
            found = [
                str(p)
                for p in path.rglob("*")
                if p.is_file()
                and _scan_suffix_ok(str(p), extensions)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)  # .trajfm/, .git/
            ]
            return found, True
        if path.is_file():
            return [str(path)], False
        raise FileNotFoundError(f"source not found: {redact_url(str(src))}")

    import fsspec

    fs, path = fsspec.core.url_to_fs(text)
    if has_glob:
        found = [p for p in fs.glob(path) if fs.isfile(p)]
        if not found:
            raise FileNotFoundError(f"source matches no files: {redact_url(str(src))}")
        return [fs.unstrip_protocol(p) for p in found if _scan_suffix_ok(p, extensions)], True
    if fs.isdir(path):
        return [fs.unstrip_protocol(p) for p in fs.find(path) if _scan_suffix_ok(p, extensions)], True
    if fs.isfile(path):
        return [text], False
    raise FileNotFoundError(f"source not found: {redact_url(str(src))}")


def resolve_sources(
    sources: list[str | os.PathLike] | str | os.PathLike, format: str | None = None
) -> tuple[list[Source], list[dict]]:
    """The files to read, sorted and de-duplicated, each with its reader; plus the skipped ones.

    A directory or glob contributes its files with the extensions of ``format`` (of every format
    when ``None``, see ``readers.known_extensions``); those whose format cannot be detected are
    skipped and listed (``{"path", "why"}``), never read half-way; a file that cannot be opened
    (a truncated or corrupt ``.gz``) raises ``SourceFormatError`` naming it, never skipped. A file
    named directly must be readable: an unknown format raises ``ValueError``. Sorting makes the output and the cache key
    independent of the order sources are given in.

    Raises ``FileNotFoundError`` for a missing path or an empty glob, and ``ValueError`` when two
    files would share ``traj_id`` values (same name in the same format, see ``Format.namespace``)
    or when nothing readable is left.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    extensions = known_extensions(format)
    scanned: set[str] = set()
    named: set[str] = set()
    for src in sources:
        urls, from_scan = _expand(src, extensions)
        (scanned if from_scan else named).update(urls)
    chosen: list[Source] = []
    skipped: list[dict] = []
    for url in sorted(scanned | named):
        if format is not None:
            chosen.append(Source(SourceFile.of(url), format))
            continue
        try:
            chosen.append(Source(SourceFile.of(url), detect_format(url)))
        except SourceFormatError:
            raise  # a file of a known kind that cannot be read (a truncated .gz): never skipped
        except ValueError as exc:
            if url in named:
                raise
            skipped.append({"path": url, "why": str(exc)})
    if not chosen and skipped:
        raise ValueError(f"no readable files among the sources; skipped: {skipped[:5]}")
    owners: dict[tuple[str, str], str] = {}
    for s in chosen:
        space = (s.format, READERS[s.format].traj_namespace(s.file))
        if space in owners:
            raise ValueError(
                f"two sources share the name {space[1]!r} ({s.format}): {owners[space]} and {s.file} "
                f"(their traj_ids would collide)"
            )
        owners[space] = s.file.url
    return chosen, skipped


def iter_sources(
    sources: "list[str | os.PathLike] | str | os.PathLike",
    format: str | None = None,
    kind: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    **options,
) -> Iterator[ReadResult]:
    """Read every file the sources name (see ``resolve_sources``), chunk by chunk, in order.

    Each ``ReadResult`` is one chunk of one file (``result.path`` says which). ``options`` go to
    each file's reader (``source``, and e.g. ``timezone`` for tdrive / generic).
    """
    files, _skipped = resolve_sources(sources, format)
    for s in files:
        yield from READERS[s.format].chunks(
            s.file, kind=kind, chunk_rows=chunk_rows, chunk_bytes=chunk_bytes, **options
        )
