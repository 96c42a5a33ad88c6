"""Geometry in metres. Coordinates are always passed as (lon, lat) in WGS84 degrees.

Displacements use a local tangent plane (east, north) at the starting point: region-agnostic,
so a model trained in New York sees the same numbers for the same motion in Beijing.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in metres between (lon1, lat1) and (lon2, lat2), degrees."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def displacement_m(lon1, lat1, lon2, lat2) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) metres from (lon1, lat1) to (lon2, lat2) in the tangent plane at point 1."""
    lon1, lat1, lon2, lat2 = (np.asarray(a, dtype=np.float64) for a in (lon1, lat1, lon2, lat2))
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0  # shortest way across the antimeridian
    east = np.radians(dlon) * EARTH_RADIUS_M * np.cos(np.radians(lat1))
    north = np.radians(lat2 - lat1) * EARTH_RADIUS_M
    return east, north


def offset_lonlat(lon, lat, east_m, north_m) -> tuple[np.ndarray, np.ndarray]:
    """Move (lon, lat) degrees by (east, north) metres; the inverse of ``displacement_m``."""
    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    lat2 = lat + np.degrees(np.asarray(north_m, dtype=np.float64) / EARTH_RADIUS_M)
    coslat = np.maximum(np.cos(np.radians(lat)), 1e-9)
    lon2 = lon + np.degrees(np.asarray(east_m, dtype=np.float64) / (EARTH_RADIUS_M * coslat))
    lon2 = (lon2 + 180.0) % 360.0 - 180.0
    return lon2, lat2
