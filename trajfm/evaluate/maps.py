"""A trajectory map for the report: context, truth and forecast with its uncertainty, in degrees.

No basemap (nothing is downloaded): a plain longitude/latitude plot whose aspect is corrected
for the latitude (1 degree of longitude is cos(lat) of a degree of latitude on the ground), so
shapes and distances look as they do on a map. The uncertainty drawn around each forecast point
is the model's own mean great-circle error at that step ahead on this evaluation (``err_model_m``
of ``collect_plot_data``), and, for a mixture head, its sampled futures.
"""

from __future__ import annotations

import math

import numpy as np

M_PER_DEG_LAT = 111_320.0  # metres per degree of latitude (mean)


def error_radius_deg(radius_m: float, lat_deg: float) -> tuple[float, float]:
    """Half-widths (longitude, latitude) in degrees of a circle of ``radius_m`` metres at ``lat_deg``."""
    dlat = radius_m / M_PER_DEG_LAT
    return dlat / max(math.cos(math.radians(lat_deg)), 1e-6), dlat


def trajectory_map_figure(d: dict, max_examples: int = 6):
    """Each example window on one lon/lat map: context (black), truth (green), the model's forecast
    (red) inside its mean error at each step (shaded ellipses), sampled futures (orange), constant
    velocity (blue, dotted). ``d``: the arrays of ``trajfm.evaluate.report.collect_plot_data``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Ellipse

    n = min(len(d["ex_true_lon"]), max_examples)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.8 * rows), dpi=90)
    err = np.asarray(d["err_model_m"], dtype=float)  # (H,) metres
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        lon0, lat0 = float(d["ex_context_lon"][i, -1]), float(d["ex_context_lat"][i, -1])
        f_lon, f_lat = d["ex_model_lon"][i], d["ex_model_lat"][i]
        for h, (x, y) in enumerate(zip(f_lon, f_lat)):
            w, hgt = error_radius_deg(float(err[h]), float(y))
            ax.add_patch(
                Ellipse(
                    (x, y),
                    2 * w,
                    2 * hgt,
                    color="tab:red",
                    alpha=0.08,
                    lw=0,
                    label="model mean error at the step" if h == 0 else None,
                )
            )
        if "ex_sample_lon" in d:
            for s in range(len(d["ex_sample_lon"])):
                ax.plot(
                    np.r_[lon0, d["ex_sample_lon"][s, i]],
                    np.r_[lat0, d["ex_sample_lat"][s, i]],
                    color="tab:orange",
                    alpha=0.25,
                    lw=0.7,
                    label="sampled futures" if s == 0 else None,
                )
        ax.plot(d["ex_context_lon"][i], d["ex_context_lat"][i], "k.-", ms=3, lw=1, label="context")
        ax.plot(np.r_[lon0, d["ex_true_lon"][i]], np.r_[lat0, d["ex_true_lat"][i]], "g.-", ms=4, label="truth")
        ax.plot(np.r_[lon0, f_lon], np.r_[lat0, f_lat], "r.--", ms=4, label="forecast")
        ax.plot(np.r_[lon0, d["ex_cv_lon"][i]], np.r_[lat0, d["ex_cv_lat"][i]], "b:", lw=1, label="constant velocity")
        ax.set_aspect(1.0 / max(math.cos(math.radians(lat0)), 1e-6), adjustable="datalim")
        ax.set_title(str(d["ex_traj_id"][i])[:28], fontsize=8)
        ax.set_xlabel("longitude (°E)", fontsize=8)
        ax.set_ylabel("latitude (°N)", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.grid(True, alpha=0.3)
        if i == 0:
            ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig
