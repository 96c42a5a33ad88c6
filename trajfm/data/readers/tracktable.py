"""Reader for Tracktable ``.traj`` text files (Sandia's Tracktable; the ``tracktable-data`` AIS).

Format (as written by Tracktable's ``TrajectoryWriter``): one line per trajectory, comma
separated tokens::

    *T*, [uuid], domain, num_points, num_traj_props, (name, type, value) * num_traj_props,
    *P*, domain, dimension, has_object_id, has_timestamp, num_point_props,
    (name, type) * num_point_props,
    then num_points points, each: [object_id], [timestamp], coord * dimension, prop * num_point_props

The uuid is absent in files older than Tracktable 1.2. In the ``terrestrial`` domain the two
coordinates are **longitude then latitude** in WGS84 degrees (checked against the AIS files: lon
about -74, lat about 40.6 in New York Harbor). Timestamps are ``YYYY-MM-DD HH:MM:SS`` in UTC.
Point properties (e.g. altitude, origin, destination of flights) are skipped.

Each point is one row read. A line whose header cannot be parsed counts as one row (its point
count is unknown) and is quarantined whole. A record whose tokens do not split into the header's
number of points quarantines its broken pieces as ``parse_error`` (a missing field shifts every
later point, and a shifted point never parses as a strict timestamp); a trailing partial point
(a truncated file) is one ``parse_error`` row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from trajfm.data.readers.checks import validate_fixes
from trajfm.data.readers.formats import Format
from trajfm.data.readers.lines import gc_paused, iter_line_chunks
from trajfm.data.readers.result import ReadResult, constant_category, empty_quarantine, quarantine_frame
from trajfm.data.readers.source_file import DEFAULT_CHUNK_BYTES, DEFAULT_CHUNK_ROWS, SourceFile
from trajfm.data.schema import empty_points

FORMAT = "tracktable"
EXTENSIONS = (".traj",)
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")
MAX_CHUNK_BYTES = 8 << 20  # ~8 MB of records (~200k points) per chunk, whatever chunk_bytes says
GEOGRAPHIC_DOMAINS = ("terrestrial",)  # coordinates are (lon, lat) degrees only in this domain

_MISALIGNED = "_misaligned"  # internal marker: point of a record whose fields do not split evenly
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class _HeaderError(ValueError):
    pass


def _parse_header(tokens: list[str]) -> dict:
    """Parse the trajectory and point headers; returns their fields and where points start."""
    try:
        if tokens[0].strip() != "*T*":
            raise _HeaderError("line does not start with *T*")
        i = 1
        uuid = None
        if _UUID.match(tokens[i].strip()):
            uuid = tokens[i].strip()
            i += 1
        domain = tokens[i].strip()
        num_points = int(tokens[i + 1])
        num_traj_props = int(tokens[i + 2])
        i += 3 + 3 * num_traj_props
        if tokens[i].strip() != "*P*":
            raise _HeaderError(f"expected *P* at token {i}, found {tokens[i][:40]!r}")
        point_domain = tokens[i + 1].strip()
        dimension = int(tokens[i + 2])
        has_object_id = bool(int(tokens[i + 3]))
        has_timestamp = bool(int(tokens[i + 4]))
        num_point_props = int(tokens[i + 5])
        i += 6 + 2 * num_point_props
        if min(num_points, num_traj_props, num_point_props, dimension) < 0 or i > len(tokens):
            raise _HeaderError("negative count or header longer than the line")
    except (IndexError, ValueError) as exc:
        raise _HeaderError(f"bad trajectory header: {exc}") from exc
    return {
        "uuid": uuid,
        "domain": domain,
        "point_domain": point_domain,
        "num_points": num_points,
        "dimension": dimension,
        "has_object_id": has_object_id,
        "has_timestamp": has_timestamp,
        "fields_per_point": int(has_object_id) + int(has_timestamp) + dimension + num_point_props,
        "first_point_token": i,
    }


@dataclass
class _Gathered:
    """Text fields of every point, gathered record by record, checked together at the end.

    Only lines are looped over in Python; each record's points arrive as numpy blocks.
    """

    ids: list[str] = field(default_factory=list)
    times: list[str] = field(default_factory=list)
    lons: list[str] = field(default_factory=list)
    lats: list[str] = field(default_factory=list)
    record: list[np.ndarray] = field(default_factory=list)  # record index of each point
    reason: list[np.ndarray] = field(default_factory=list)  # reason known before parsing, or None
    detail: list[np.ndarray] = field(default_factory=list)
    blocks: dict[int, np.ndarray] = field(default_factory=dict)  # record -> (n, k) point tokens
    record_line: list[int] = field(default_factory=list)  # 1-based line of each record
    record_base: list[str] = field(default_factory=list)  # traj_id of each record
    # Rows rejected before field parsing (bad header, incomplete last point): one row each.
    bad_line: list[int] = field(default_factory=list)
    bad_raw: list[str] = field(default_factory=list)
    bad_detail: list[str] = field(default_factory=list)

    def reject_row(self, line_no: int, raw: str, detail: str) -> None:
        self.bad_line.append(line_no)
        self.bad_raw.append(raw)
        self.bad_detail.append(detail)


def iter_tracktable(
    file: SourceFile,
    kind: str = "vessel",
    source_tag: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[ReadResult]:
    """Read a ``.traj`` file chunk by chunk (a chunk: whole lines, so whole records).

    ``traj_id`` is ``"<file stem>:<record uuid>"`` (``"<file stem>:L<line>"`` without a uuid;
    ``":<obj_id>"`` is appended when one record mixes several object ids, so a traj_id always
    belongs to one mover). ``obj_id`` is the point's object id (the MMSI for AIS), ``kind`` the
    given mover kind, ``source`` the file stem (or ``source_tag``).
    """
    stem = file.stem
    tag = source_tag or stem
    # A line holds a whole trajectory, split into Python strings: cap the text per chunk.
    for chunk in iter_line_chunks(file, chunk_rows, min(chunk_bytes, MAX_CHUNK_BYTES)):
        acc = _Gathered()
        notes: list[str] = []
        with gc_paused():
            for line_no, line, line_undecodable in zip(chunk.line_numbers.tolist(), chunk.lines, chunk.undecodable):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                tokens = line.split(",")
                try:
                    hdr = _parse_header(tokens)
                except _HeaderError as exc:
                    acc.reject_row(line_no, line, str(exc) + ("; line has non-UTF-8 bytes" if line_undecodable else ""))
                    continue
                note = _gather_record(acc, hdr, tokens, line_no, line_undecodable, stem)
                if note:
                    notes.append(note)

        points, quarantine, n_points = _check_points(acc, file, tag, kind)
        if acc.bad_line:
            extra = quarantine_frame(
                str(file), acc.bad_line, acc.bad_raw, ["parse_error"] * len(acc.bad_line), acc.bad_detail
            )
            quarantine = extra if quarantine.empty else pd.concat([quarantine, extra], ignore_index=True)
            quarantine = quarantine.sort_values("line", kind="stable").reset_index(drop=True)
        result = ReadResult(points, quarantine, n_points + len(acc.bad_line), file.display(), FORMAT, notes)
        result.check_accounting()
        yield result


def read_tracktable(path: str | Path, kind: str = "vessel", **kwargs) -> ReadResult:
    """Read a ``.traj`` file into canonical points (lon/lat degrees, ``t`` UTC) and quarantine.

    See ``iter_tracktable``; ``kwargs``: ``source``, ``chunk_rows``, ``chunk_bytes``.
    """
    return TRACKTABLE.read(path, kind=kind, **kwargs)


def _gather_record(acc: _Gathered, hdr: dict, tokens: list[str], line_no: int, undecodable: bool, source: str):
    """Cut one record's tokens into points and add them to ``acc``; returns a note or ``None``."""
    k = hdr["fields_per_point"]
    rest = tokens[hdr["first_point_token"] :]
    n_complete, leftover = divmod(len(rest), k) if k > 0 else (0, len(rest))
    rec = len(acc.record_line)
    acc.record_line.append(line_no)
    acc.record_base.append(f"{source}:{hdr['uuid']}" if hdr["uuid"] else f"{source}:L{line_no}")

    if n_complete:
        block = np.asarray(rest[: n_complete * k], dtype=object).reshape(n_complete, k)
        reason = np.full(n_complete, None, dtype=object)
        detail = np.full(n_complete, None, dtype=object)

        def reject_all(code: str, text: str) -> None:
            unset = pd.isna(reason)
            reason[unset], detail[unset] = code, text

        empty = np.full(n_complete, "", dtype=object)
        col = 0
        ids = block[:, col] if hdr["has_object_id"] else empty
        col += int(hdr["has_object_id"])
        times = block[:, col] if hdr["has_timestamp"] else empty
        col += int(hdr["has_timestamp"])
        if not hdr["has_object_id"]:
            reject_all("missing_value", "record has no object ids (has_object_id = 0)")
        if not hdr["has_timestamp"]:
            reject_all("missing_value", "record has no timestamps (has_timestamp = 0)")
        geographic = hdr["domain"] in GEOGRAPHIC_DOMAINS and hdr["point_domain"] in GEOGRAPHIC_DOMAINS
        if geographic and hdr["dimension"] == 2:
            lons, lats = block[:, col], block[:, col + 1]
        else:
            lons = lats = empty
            reject_all("parse_error", f"domain {hdr['domain']!r} dimension {hdr['dimension']} holds no (lon, lat)")
        if undecodable:
            bad_bytes = np.asarray(["\ufffd" in ",".join(row) for row in block], dtype=bool) & pd.isna(reason)
            reason[bad_bytes], detail[bad_bytes] = "parse_error", "point has non-UTF-8 bytes"
        if n_complete != hdr["num_points"] or leftover:
            # Fields missing or extra: whatever fails to parse in this record failed because of it.
            reason[pd.isna(reason)] = _MISALIGNED
        acc.ids.extend(ids)
        acc.times.extend(times)
        acc.lons.extend(lons)
        acc.lats.extend(lats)
        acc.record.append(np.full(n_complete, rec, dtype=np.int64))
        acc.reason.append(reason)
        acc.detail.append(detail)
        acc.blocks[rec] = block
    if leftover:
        acc.reject_row(
            line_no,
            ",".join(rest[n_complete * k :]),
            f"incomplete point: {leftover} of {k} fields after {n_complete} points "
            f"(header says {hdr['num_points']}; truncated or missing fields)",
        )
    elif n_complete != hdr["num_points"]:
        return f"line {line_no}: header says {hdr['num_points']} points, record holds {n_complete}"
    return None


def _check_points(acc: _Gathered, path: SourceFile, source: str, kind: str) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Validate all gathered points at once; split them into canonical points and quarantine."""
    n = len(acc.ids)
    if n == 0:
        return empty_points(), empty_quarantine(), 0
    rec = np.concatenate(acc.record)
    reason = np.concatenate(acc.reason)
    detail = np.concatenate(acc.detail)
    misaligned = reason == _MISALIGNED
    reason[misaligned] = None
    parsed, reason, detail = validate_fixes(
        acc.ids, acc.times, acc.lons, acc.lats, TIME_FORMATS, pre_reason=reason, pre_detail=detail
    )
    failed_in_misaligned = misaligned & ~pd.isna(reason)
    if failed_in_misaligned.any():
        detail[failed_in_misaligned] = [
            f"record fields do not split into its points ({d})" for d in detail[failed_in_misaligned]
        ]
        reason[failed_in_misaligned] = "parse_error"

    good = pd.isna(reason)
    kept = parsed.loc[good].reset_index(drop=True)
    traj_id = pd.Series(np.asarray(acc.record_base, dtype=object)[rec[good]], dtype=object)
    # A traj_id must belong to one mover: records mixing object ids get the id appended.
    mixed = kept.groupby(rec[good])["obj_id"].transform("nunique").to_numpy() > 1
    if mixed.any():
        traj_id[mixed] = traj_id[mixed] + ":" + kept.loc[mixed, "obj_id"]
    points = pd.DataFrame(
        {
            "traj_id": traj_id.astype("string"),
            "obj_id": kept["obj_id"].astype("string"),
            "t": kept["t"],
            "lon": kept["lon"],
            "lat": kept["lat"],
            "kind": constant_category(kind, len(kept)),
            "source": constant_category(source, len(kept)),
        }
    )
    bad = ~good
    # Raw text is rebuilt only for rejected points: (record, position in record) -> its tokens.
    pos_in_rec = np.arange(n) - np.searchsorted(rec, rec, side="left")  # rec is non-decreasing
    raw = [",".join(acc.blocks[r][p]) for r, p in zip(rec[bad], pos_in_rec[bad])]
    line = np.asarray(acc.record_line, dtype=np.int64)[rec[bad]]
    quarantine = quarantine_frame(str(path), line, raw, reason[bad], detail[bad])
    return points, quarantine, n


TRACKTABLE = Format(
    name=FORMAT,
    iter_chunks=iter_tracktable,
    extensions=EXTENSIONS,
    kind="vessel",
    description="Tracktable .traj text: one trajectory per line (tracktable-data AIS)",
)
