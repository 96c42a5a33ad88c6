"""Stop detection with MovingPandas' ``TrajectoryStopDetector`` semantics, without a loop per fix.

A *stop* is a run of consecutive fixes that stays within ``max_diameter_m`` metres for at least
``min_duration`` (MovingPandas 0.23, ``StopSplitter(traj).split(max_diameter=, min_duration=)``).
"Stays within" is MovingPandas' own measure, reproduced exactly: the geodesic (WGS84) length of
the diagonal of the minimum rotated rectangle of the fixes, the rectangle computed in lon/lat
degrees (shapely's ``oriented_envelope``), after a cheap pre-check that the geodesic diagonal of
the lon/lat bounding box is below ``1.5 * max_diameter_m``.

MovingPandas walks every fix with a window that is trimmed to the last ``min_duration`` while
the mover is not stopped and grows while it is. The same state machine runs here, but its
decisions come from arrays:

- *bounds*: for any window, the bounding box (range minimum/maximum tables) gives a lower and an
  upper bound of the rectangle diagonal in metres. Windows whose bounds decide the question (the
  mover is clearly moving, or clearly within the diameter) are never measured exactly.
- *exact measure*, only for undecided windows, batched through shapely and ``pyproj.Geod``.
- while stopped, a fix inside the convex hull of the window cannot change the rectangle, so
  only fixes that extend the hull are measured.

The Python loop runs once per *stop* (and per batch of undecided windows), not per fix.

Bounds (degrees -> metres): one degree is at least ``110,574 * cos(lat)`` metres in any direction
and at most ``111,694`` metres; the rectangle's diagonal is at least the bounding box's larger side
and at most ``sqrt(2)`` times the set's diameter (a minimum-area rectangle has a side on a hull
edge, so both its sides are at most the diameter). Margins of 2 % absorb the curvature over a
stop-sized window.
"""

from __future__ import annotations

import numpy as np

M_PER_DEG_MIN = 110_574.0  # metres per degree of latitude at the equator (WGS84), the smallest
M_PER_DEG_MAX = 111_694.0  # metres per degree of latitude at the poles, the largest in any direction
_MARGIN = 0.02
_CHUNK = 256  # fixes looked at per step of a search

UNDECIDED, MOVING, STOPPED = 0, 1, 2


_GEOD = None


def _geod():
    global _GEOD
    if _GEOD is None:
        from pyproj import Geod

        _GEOD = Geod(ellps="WGS84")
    return _GEOD


def geodesic_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Geodesic distance on the WGS84 ellipsoid in metres (what geopy's ``distance`` returns)."""
    lon1, lat1, lon2, lat2 = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    if len(lon1) == 0:
        return np.zeros(0)
    return np.asarray(_geod().inv(lon1, lat1, lon2, lat2)[2], dtype=np.float64)


def window_diameter_m(lon: np.ndarray, lat: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MovingPandas' stop measure for consecutive groups of points (``sizes`` points each, >= 2).

    Returns ``(bbox_diagonal_m, rectangle_diagonal_m)``: the geodesic diagonal of each group's
    lon/lat bounding box (``(min lat, min lon)`` to ``(max lat, max lon)``), and the geodesic
    length from corner 0 to corner 2 of the minimum rotated rectangle in degrees (from first to
    last coordinate when the rectangle degenerates to a line or a point; the plain distance for
    two points), as ``movingpandas.geometry_utils.mrr_diagonal`` computes it.
    """
    import shapely

    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    min_lon, max_lon = np.minimum.reduceat(lon, starts), np.maximum.reduceat(lon, starts)
    min_lat, max_lat = np.minimum.reduceat(lat, starts), np.maximum.reduceat(lat, starts)
    bbox = geodesic_m(min_lon, min_lat, max_lon, max_lat)

    x0, y0 = lon[starts].copy(), lat[starts].copy()
    x1, y1 = lon[starts + 1].copy(), lat[starts + 1].copy()
    many = np.flatnonzero(sizes > 2)
    if len(many):
        take = np.repeat(sizes > 2, sizes)
        mp = shapely.multipoints(
            np.column_stack([lon[take], lat[take]]), indices=np.repeat(np.arange(len(many)), sizes[many])
        )
        env = shapely.oriented_envelope(mp)
        kind = shapely.get_type_id(env)
        poly = kind == 3
        if poly.any():
            coords, idx = shapely.get_coordinates(shapely.get_exterior_ring(env[poly]), return_index=True)
            first = np.searchsorted(idx, np.arange(poly.sum()))
            x0[many[poly]], y0[many[poly]] = coords[first, 0], coords[first, 1]
            x1[many[poly]], y1[many[poly]] = coords[first + 2, 0], coords[first + 2, 1]
        line = ~poly
        if line.any():  # LineString (collinear points) or Point (all equal): first to last coordinate
            coords, idx = shapely.get_coordinates(env[line], return_index=True)
            first = np.searchsorted(idx, np.arange(line.sum()))
            last = np.searchsorted(idx, np.arange(line.sum()), side="right") - 1
            x0[many[line]], y0[many[line]] = coords[first, 0], coords[first, 1]
            x1[many[line]], y1[many[line]] = coords[last, 0], coords[last, 1]
    return bbox, geodesic_m(x0, y0, x1, y1)


def _exactly_stopped(lon, lat, sizes, max_diameter_m) -> np.ndarray:
    bbox, diag = window_diameter_m(lon, lat, sizes)
    return (bbox < 1.5 * max_diameter_m) & (diag < max_diameter_m)


def _classify(min_lon, max_lon, min_lat, max_lat, n_points, max_diameter_m) -> np.ndarray:
    """MOVING / STOPPED when the bounding box decides it, UNDECIDED otherwise (see module doc)."""
    w, h = max_lon - min_lon, max_lat - min_lat
    far_lat = np.minimum(np.maximum(np.abs(min_lat), np.abs(max_lat)) + 0.01, 90.0)
    min_scale = M_PER_DEG_MIN * np.cos(np.radians(far_lat)) * (1 - _MARGIN)
    lower = min_scale * np.maximum(w, h)
    bbox_lower = min_scale * np.hypot(w, h)
    upper = M_PER_DEG_MAX * (1 + _MARGIN) * np.sqrt(2.0) * np.hypot(w, h)
    out = np.full(len(w), UNDECIDED, dtype=np.int8)
    out[upper < max_diameter_m] = STOPPED
    out[(lower >= max_diameter_m) | (bbox_lower >= 1.5 * max_diameter_m) | (n_points < 2)] = MOVING
    return out


class _RangeMinMax:
    """Minimum and maximum of ``x[a..b]`` (inclusive) for many windows at once (sparse tables)."""

    def __init__(self, x: np.ndarray, longest: int):
        self.mins, self.maxs = [x], [x]
        width = 1
        while width * 2 <= max(longest, 1):
            lo, hi = self.mins[-1], self.maxs[-1]
            self.mins.append(np.minimum(lo[:-width], lo[width:]))
            self.maxs.append(np.maximum(hi[:-width], hi[width:]))
            width *= 2

    def query(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        length = b - a + 1
        level = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
        lo, hi = np.empty(len(a)), np.empty(len(a))
        for k in np.unique(level):
            sel = level == k
            i, j = a[sel], b[sel] - (1 << int(k)) + 1
            lo[sel] = np.minimum(self.mins[k][i], self.mins[k][j])
            hi[sel] = np.maximum(self.maxs[k][i], self.maxs[k][j])
        return lo, hi


def detect_stops(
    t_ns: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    seg_start: np.ndarray,
    seg_end: np.ndarray,
    max_diameter_m: np.ndarray,
    min_duration_ns: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Stops of each segment, as MovingPandas' ``TrajectoryStopDetector.get_stop_time_ranges``.

    Segment ``s`` is rows ``seg_start[s]:seg_end[s]`` of ``t_ns`` (int64 UTC ns, strictly
    increasing inside a segment), ``lon, lat`` (WGS84 degrees); ``max_diameter_m`` (metres) and
    ``min_duration_ns`` are per segment. Returns ``(first, last)``: the first and last row of each
    stop (inclusive), in row order.
    """
    seg_start = np.asarray(seg_start, dtype=np.int64)
    seg_end = np.asarray(seg_end, dtype=np.int64)
    firsts: list[np.ndarray] = []
    lasts: list[np.ndarray] = []
    if len(seg_start) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    n_rows = seg_end - seg_start
    seg_of_row = np.repeat(np.arange(len(seg_start)), n_rows)
    # Rows of all segments, laid end to end: index p of the arrays below is row `row_of[p]`.
    row_of = _ranges(seg_start, seg_end)
    t, x, y = t_ns[row_of], lon[row_of], lat[row_of]
    first_p = np.cumsum(n_rows) - n_rows
    end_p = first_p + n_rows
    dur = np.asarray(min_duration_ns, dtype=np.int64)[seg_of_row]
    diam = np.asarray(max_diameter_m, dtype=np.float64)[seg_of_row]

    # While moving, the window ending at fix p starts at the first fix less than min_duration
    # before it, but holds at least two fixes: a(p) = min(k*(p), p - 1), never before the segment.
    v = t - t[first_p][seg_of_row] + _axis_base(t, first_p, end_p)[seg_of_row]
    kstar = np.searchsorted(v, v - dur, side="right")
    p = np.arange(len(t))
    a = np.maximum(np.minimum(kstar, p - 1), first_p[seg_of_row])
    longest = int((p - a + 1).max()) if len(p) else 1
    rx, ry = _RangeMinMax(x, longest), _RangeMinMax(y, longest)
    cls = _window_class(rx, ry, a, p, diam)
    cls[p == first_p[seg_of_row]] = MOVING  # a window of one fix is never a stop

    for s in np.flatnonzero(np.bincount(seg_of_row[cls != MOVING], minlength=len(seg_start)) > 0):
        first, last = _segment_stops(
            t, x, y, a, cls, rx, ry, int(first_p[s]), int(end_p[s]), float(diam[first_p[s]]), int(dur[first_p[s]])
        )
        firsts.append(row_of[first])
        lasts.append(row_of[last])
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(firsts), np.concatenate(lasts)


def _ranges(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(start[i], end[i])`` without a Python loop."""
    n = end - start
    total = int(n.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(n) - n
    return np.arange(total, dtype=np.int64) - np.repeat(offsets - start, n)


def _axis_base(t, first_p, end_p):
    """Offsets that lay segments end to end on one increasing time axis (a 1 s gap between)."""
    span = t[end_p - 1] - t[first_p] + 1_000_000_000
    return np.cumsum(span) - span


def _window_class(rx, ry, a, b, diam):
    lo_x, hi_x = rx.query(a, b)
    lo_y, hi_y = ry.query(a, b)
    return _classify(lo_x, hi_x, lo_y, hi_y, b - a + 1, diam)


def _segment_stops(t, x, y, a, cls, rx, ry, start, end, diam, dur):
    """The MovingPandas state machine on one segment (positions ``start:end``), stop by stop."""
    firsts, lasts = [], []
    base = start  # the window never starts before this fix (moved on after each stop)
    j = start + 1
    while j < end:
        j0, s = _first_stopped_window(x, y, a, cls, rx, ry, base, j, end, diam)
        if j0 is None:
            break
        j1 = _first_break(x, y, s, j0, end, diam)
        if j1 is None:  # stopped until the segment ends
            if t[end - 1] - t[s] >= dur:
                firsts.append(s)
                lasts.append(end - 1)
            break
        if t[j1 - 1] - t[s] >= dur:
            firsts.append(s)
            lasts.append(j1 - 1)
            base = j1  # MovingPandas restarts the window at the fix that left the stop
        else:
            base = s  # too short: the window is kept and trimmed from its start again
        j = j1 + 1
    return np.asarray(firsts, np.int64), np.asarray(lasts, np.int64)


def _first_stopped_window(x, y, a, cls, rx, ry, base, j, end, diam):
    """First fix p >= j whose (trimmed) window is a stop; returns ``(p, window start)``."""
    while j < end:
        stop = min(j + _CHUNK, end)
        p = np.arange(j, stop)
        win = np.maximum(a[j:stop], base)
        c = cls[j:stop].copy()
        moved = a[j:stop] < base  # windows cut short by the last stop: classify them afresh
        if moved.any():
            c[moved] = _window_class(rx, ry, win[moved], p[moved], np.full(moved.sum(), diam))
        c[win >= p] = MOVING
        decided = np.flatnonzero(c == STOPPED)
        limit = decided[0] if len(decided) else len(p)
        undecided = np.flatnonzero(c[:limit] == UNDECIDED)
        batch = 4  # measured in growing batches: the first stop found ends the search
        while len(undecided):
            now, undecided = undecided[:batch], undecided[batch:]
            sizes = p[now] - win[now] + 1
            pts = _ranges(win[now], p[now] + 1)
            hit = np.flatnonzero(_exactly_stopped(x[pts], y[pts], sizes, diam))
            if len(hit):
                i = now[hit[0]]
                return int(p[i]), int(win[i])
            batch *= 4
        if len(decided):
            return int(p[limit]), int(win[limit])
        j = stop
    return None, None


def _first_break(x, y, s, j0, end, diam):
    """First fix p > j0 for which the growing window ``s..p`` is no longer a stop (None: none).

    The window ``s..j0`` is a stop. A fix inside the convex hull of the window so far leaves the
    rectangle unchanged, so only fixes outside it are measured, a batch at a time, each as the
    hull's vertices plus the fixes since the hull was taken (same hull, same rectangle). GEOS's
    hull can fail on many nearly collinear points (libgeos/geos#722); when a hull does not cover
    its own points, the stop falls back to measuring whole windows, exactly as MovingPandas does.
    """
    import shapely

    hull = _hull(x[s : j0 + 1], y[s : j0 + 1])
    trusted = bool(shapely.intersects_xy(hull, x[s : j0 + 1], y[s : j0 + 1]).all())
    in_hull = j0  # fixes s..in_hull are inside `hull`
    lo_x, hi_x = x[s : j0 + 1].min(), x[s : j0 + 1].max()
    lo_y, hi_y = y[s : j0 + 1].min(), y[s : j0 + 1].max()
    pos = j0 + 1
    while pos < end:
        stop = min(pos + _CHUNK, end)
        # Bounding box of the growing window s..p for every p of the chunk.
        cx = np.minimum.accumulate(np.minimum(x[pos:stop], lo_x))
        cX = np.maximum.accumulate(np.maximum(x[pos:stop], hi_x))
        cy = np.minimum.accumulate(np.minimum(y[pos:stop], lo_y))
        cY = np.maximum.accumulate(np.maximum(y[pos:stop], hi_y))
        c = _classify(cx, cX, cy, cY, np.full(stop - pos, 2), np.full(stop - pos, diam))
        moving = np.flatnonzero(c == MOVING)
        limit = moving[0] if len(moving) else stop - pos
        cand = pos + np.flatnonzero(c[:limit] == UNDECIDED)
        batch = 8
        while len(cand):
            if trusted:
                cand = cand[~shapely.intersects_xy(hull, x[cand], y[cand])]
                if not len(cand):
                    break
            qs, cand = cand[:batch], cand[batch:]
            if trusted:
                hx, hy = _hull_xy(hull)
                idx = _ranges(np.full(len(qs), in_hull + 1), qs + 1)
                # Each window: the hull's vertices, then the fixes since the hull was taken.
                sizes = len(hx) + (qs - in_hull)
                px = np.empty(int(sizes.sum()))
                py = np.empty_like(px)
                first = np.cumsum(sizes) - sizes
                head = (first[:, None] + np.arange(len(hx))[None, :]).ravel()
                px[head], py[head] = np.tile(hx, len(qs)), np.tile(hy, len(qs))
                tail = np.ones(len(px), dtype=bool)
                tail[head] = False
                px[tail], py[tail] = x[idx], y[idx]
            else:
                idx = _ranges(np.full(len(qs), s), qs + 1)
                px, py, sizes = x[idx], y[idx], qs - s + 1
            ok = _exactly_stopped(px, py, sizes, diam)
            if not ok.all():
                return int(qs[np.argmin(ok)])
            if trusted:
                last = slice(len(px) - int(sizes[-1]), len(px))
                hull, in_hull = _hull(px[last], py[last]), int(qs[-1])
                trusted = bool(shapely.intersects_xy(hull, px[last], py[last]).all())
            batch = min(batch * 2, _CHUNK)
        if len(moving):
            return int(pos + limit)
        lo_x, hi_x, lo_y, hi_y = cx[-1], cX[-1], cy[-1], cY[-1]
        pos = stop
    return None


def _hull(px, py):
    import shapely

    return shapely.convex_hull(shapely.multipoints(np.column_stack([px, py])))


def _hull_xy(hull) -> tuple[np.ndarray, np.ndarray]:
    import shapely

    xy = shapely.get_coordinates(hull)
    return xy[:, 0], xy[:, 1]
