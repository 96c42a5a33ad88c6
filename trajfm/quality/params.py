"""Gate thresholds that follow from the preprocessing that produced a stage."""

from __future__ import annotations

import math

# Resampled fixes between two original fixes at exactly the speed limit can measure a hair above
# it (the cleaner's distance and the gate's differ in the last digits: seen on GeoLife at
# 50.0014 m/s for a 50 m/s limit); 0.1% is far below any real speed error.
SPEED_TOLERANCE = 1e-3


def processed_gate_params(preprocess_manifest: dict, kinds: list[str], overrides: dict | None = None) -> dict:
    """Thresholds for the ``processed`` suite from the preprocess manifest's per-kind params.

    ``v_max_mps``: the largest speed limit among the kinds present (the cleaner enforced each
    kind's own, so none may exceed it); ``min_points``: the fewest resampled fixes a kept segment
    can have, ``floor(min_duration_s / interval_s)`` (grid points inside the shortest kept span), at least 2
    (2 when a source was resampled at its coarser native interval). ``overrides`` win.
    """
    table = preprocess_manifest.get("params", {})
    chosen = [table.get(k) or table.get("*") for k in kinds]
    chosen = [p for p in chosen if p]
    out: dict = {}
    if chosen:
        out["v_max_mps"] = max(float(p["v_max_mps"]) for p in chosen) * (1 + SPEED_TOLERANCE)
        out["min_points"] = max(2, min(int(math.floor(p["min_duration_s"] / p["interval_s"])) for p in chosen))
        if preprocess_manifest.get("n_native_interval", 0):
            # Some source was resampled at its own, coarser interval (trajfm.data.sampling): the
            # shortest kept piece is then only guaranteed its 2 resampled fixes.
            out["min_points"] = 2
    out.update(overrides or {})
    return out
