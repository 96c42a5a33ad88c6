"""Lines of text in bounded chunks: how a reader streams a file.

``iter_line_chunks`` reads a ``SourceFile`` as ``LineChunk`` s of at most ``chunk_rows`` lines and
about ``chunk_bytes`` bytes (memory is bounded by the chunk, not by the file), decoding each chunk
on first use and flagging lines that are not UTF-8; ``header_then_chunks`` finds a header line,
``non_blank`` drops blank lines.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Iterator

import numpy as np

from trajfm.data.readers.source_file import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CHUNK_ROWS,
    MAX_BLOCK_BYTES,
    MIN_BLOCK_BYTES,
    SourceFile,
)


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

    @property
    def is_decoded(self) -> bool:
        """True once the lines are text (always for a chunk made ``from_lines``)."""
        return self._lines is not None

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

        def after(rest: LineChunk = rest) -> Iterator[LineChunk]:
            if len(rest):
                yield rest
            yield from chunks

        return header, after()
    return None, iter(())


def _first_non_blank(chunk: LineChunk) -> tuple[int | None, str, bool]:
    """(index, text, has non-UTF-8 bytes) of the chunk's first non-blank line, decoding only it."""
    if chunk.is_decoded:
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
