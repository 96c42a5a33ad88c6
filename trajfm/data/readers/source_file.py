"""Where a reader's bytes come from: a local path or an fsspec URL, compressed or not.

``SourceFile`` names one input file (``file://``, ``memory://``, ``s3://``, ...) and opens it
decompressed (``.gz``/``.bz2``/``.xz``/``.zst``); ``SourceFormatError`` is the one error a reader
raises for a file that is not its format, naming the file (credentials of a URL redacted) and line.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

from trajfm.store import redact_url

DEFAULT_CHUNK_ROWS = 200_000  # lines of text (or Parquet rows) per chunk
DEFAULT_CHUNK_BYTES = 32 << 20  # bytes of text per chunk, whatever the line count
MIN_BLOCK_BYTES = 1 << 16
MAX_BLOCK_BYTES = 8 << 20

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


class SourceFormatError(ValueError):
    """A file is not in the format its reader expects: one error naming the file and line."""

    def __init__(self, file: str, line: int | None, message: str):
        self.file, self.line = redact_url(str(file)), line  # no credentials of a URL in messages
        where = f"{self.file}, line {line}" if line is not None else self.file
        super().__init__(f"{where}: {message}")


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
