"""What a source format is, as the registry (``trajfm.data.readers.registry``) knows it: how to
read it (``iter_chunks``, one ``ReadResult`` per chunk) and how to recognise it (``extensions``,
``sniff``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

from trajfm.data.readers.result import ReadResult, count_time_reversals
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile


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
