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
from pathlib import Path

import numpy as np
import pandas as pd

from trajfm.data.readers.base import (
    ReadResult,
    decode_lines,
    empty_quarantine,
    quarantine_frame,
    validate_fixes,
)
from trajfm.data.schema import empty_points

FORMAT = "tracktable"
EXTENSIONS = (".traj",)
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")
GEOGRAPHIC_DOMAINS = ("terrestrial",)  # coordinates are (lon, lat) degrees only in this domain

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


def read_tracktable(path: str | Path, kind: str = "vessel") -> ReadResult:
    """Read a ``.traj`` file into canonical points (lon/lat degrees, ``t`` UTC) and quarantine.

    ``traj_id`` is ``"<file stem>:<record uuid>"`` (``"<file stem>:L<line>"`` without a uuid;
    ``":<obj_id>"`` is appended when one record mixes several object ids, so a traj_id always
    belongs to one mover). ``obj_id`` is the point's object id (the MMSI for AIS), ``kind`` the
    given mover kind, ``source`` the file stem.
    """
    path = Path(path)
    source = path.stem
    lines, undecodable = decode_lines(path.read_bytes())

    # Column pieces gathered record by record (Python loop over lines only, not over points).
    obj_ids: list[str] = []
    times: list[str] = []
    lons: list[str] = []
    lats: list[str] = []
    rec_of_point: list[np.ndarray] = []  # index into `records` for each point
    pre_reason: list[np.ndarray] = []
    pre_detail: list[np.ndarray] = []
    token_blocks: dict[int, np.ndarray] = {}  # record -> (n_points, k) tokens, for raw text
    records: list[tuple[int, str]] = []  # (1-based line, traj_id base)

    bad_lines, bad_raw, bad_reason, bad_detail = [], [], [], []
    notes: list[str] = []

    for line_no, (line, line_undecodable) in enumerate(zip(lines, undecodable), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split(",")
        try:
            hdr = _parse_header(tokens)
        except _HeaderError as exc:
            bad_lines.append(line_no)
            bad_raw.append(line)
            bad_reason.append("parse_error")
            bad_detail.append(str(exc) + ("; line has non-UTF-8 bytes" if line_undecodable else ""))
            continue

        k = hdr["fields_per_point"]
        rest = tokens[hdr["first_point_token"] :]
        n_complete, leftover = divmod(len(rest), k) if k > 0 else (0, len(rest))
        rec = len(records)
        base = f"{source}:{hdr['uuid']}" if hdr["uuid"] else f"{source}:L{line_no}"
        records.append((line_no, base))

        if n_complete:
            point_tokens = np.asarray(rest[: n_complete * k], dtype=object).reshape(n_complete, k)
            reason = np.full(n_complete, None, dtype=object)
            detail = np.full(n_complete, None, dtype=object)
            col = 0
            if hdr["has_object_id"]:
                ids = point_tokens[:, col]
                col += 1
            else:
                ids = np.full(n_complete, "", dtype=object)
                reason[:], detail[:] = "missing_value", "record has no object ids (has_object_id = 0)"
            if hdr["has_timestamp"]:
                ts = point_tokens[:, col]
                col += 1
            else:
                ts = np.full(n_complete, "", dtype=object)
                reason[pd.isna(reason)] = "missing_value"
                detail[pd.isna(detail)] = "record has no timestamps (has_timestamp = 0)"
            if hdr["domain"] in GEOGRAPHIC_DOMAINS and hdr["point_domain"] in GEOGRAPHIC_DOMAINS and hdr["dimension"] == 2:
                lon_t, lat_t = point_tokens[:, col], point_tokens[:, col + 1]
            else:
                lon_t = lat_t = np.full(n_complete, "", dtype=object)
                reason[pd.isna(reason)] = "parse_error"
                detail[pd.isna(detail)] = (
                    f"domain {hdr['domain']!r} dimension {hdr['dimension']} holds no (lon, lat)"
                )
            if n_complete != hdr["num_points"] or leftover:
                # Misaligned record: whatever fails in it failed because fields are missing or extra.
                reason[pd.isna(reason)] = "_misaligned"
            if line_undecodable:
                bad_bytes = np.asarray(["\ufffd" in ",".join(row) for row in point_tokens], dtype=bool)
                reason[bad_bytes & pd.isna(reason)] = "parse_error"
                detail[bad_bytes & pd.isna(detail)] = "point has non-UTF-8 bytes"
            obj_ids.extend(ids)
            times.extend(ts)
            lons.extend(lon_t)
            lats.extend(lat_t)
            rec_of_point.append(np.full(n_complete, rec, dtype=np.int64))
            pre_reason.append(reason)
            pre_detail.append(detail)
            token_blocks[rec] = point_tokens
        if leftover:
            bad_lines.append(line_no)
            bad_raw.append(",".join(rest[n_complete * k :]))
            bad_reason.append("parse_error")
            bad_detail.append(
                f"incomplete point: {leftover} of {k} fields after {n_complete} points "
                f"(header says {hdr['num_points']}; truncated or missing fields)"
            )
        elif n_complete != hdr["num_points"]:
            notes.append(f"line {line_no}: header says {hdr['num_points']} points, record holds {n_complete}")

    points, quarantine, n_points = _assemble(
        path, source, kind, records, obj_ids, times, lons, lats, rec_of_point, pre_reason, pre_detail, token_blocks
    )
    if bad_lines:
        extra = quarantine_frame(str(path), bad_lines, bad_raw, bad_reason, bad_detail)
        quarantine = extra if quarantine.empty else pd.concat([quarantine, extra], ignore_index=True)
        quarantine = quarantine.sort_values("line", kind="stable").reset_index(drop=True)
    result = ReadResult(points, quarantine, n_points + len(bad_lines), path, FORMAT, notes)
    result.check_accounting()
    return result


def _assemble(path, source, kind, records, obj_ids, times, lons, lats, rec_of_point, pre_reason, pre_detail, token_blocks):
    """Validate all gathered points at once and split them into points and quarantine."""
    n = len(obj_ids)
    if n == 0:
        return empty_points(), empty_quarantine(), 0
    rec = np.concatenate(rec_of_point)
    reason = np.concatenate(pre_reason)
    detail = np.concatenate(pre_detail)
    misaligned = reason == "_misaligned"
    reason[misaligned] = None
    parsed, reason, detail = validate_fixes(
        pd.Series(obj_ids, dtype=object),
        pd.Series(times, dtype=object),
        pd.Series(lons, dtype=object),
        pd.Series(lats, dtype=object),
        TIME_FORMATS,
        pre_reason=reason,
        pre_detail=detail,
    )
    failed_in_misaligned = misaligned & ~pd.isna(reason)
    if failed_in_misaligned.any():
        detail[failed_in_misaligned] = [
            f"record fields do not split into its points ({d})" for d in detail[failed_in_misaligned]
        ]
        reason[failed_in_misaligned] = "parse_error"

    line_of_rec = np.asarray([r[0] for r in records], dtype=np.int64)
    base_of_rec = np.asarray([r[1] for r in records], dtype=object)
    good = pd.isna(reason)

    kept = parsed.loc[good].reset_index(drop=True)
    traj_id = pd.Series(base_of_rec[rec[good]], dtype=object)
    # A traj_id must belong to one mover: records mixing object ids get the id appended.
    n_ids = kept.groupby(rec[good])["obj_id"].transform("nunique").to_numpy()
    mixed = n_ids > 1
    if mixed.any():
        traj_id[mixed] = traj_id[mixed] + ":" + kept.loc[mixed, "obj_id"]
    points = pd.DataFrame(
        {
            "traj_id": traj_id.astype("string"),
            "obj_id": kept["obj_id"].astype("string"),
            "t": kept["t"],
            "lon": kept["lon"],
            "lat": kept["lat"],
            "kind": pd.Categorical([kind] * len(kept)),
            "source": pd.Categorical([source] * len(kept)),
        }
    )
    bad = ~good
    # Raw text is rebuilt only for rejected points: (record, position in record) -> its tokens.
    pos_in_rec = np.arange(n) - np.searchsorted(rec, rec, side="left")  # rec is non-decreasing
    raw = [",".join(token_blocks[r][p]) for r, p in zip(rec[bad], pos_in_rec[bad])]
    quarantine = quarantine_frame(str(path), line_of_rec[rec[bad]], raw, reason[bad], detail[bad])
    return points, quarantine, n
