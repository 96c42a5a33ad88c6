"""The embedded default dataset: real AIS vessel tracks shipped in the ``tracktable-data`` package.

``tracktable-data`` (PyPI, BSD-2, Sandia National Laboratories) installs example data under
``tracktable_data/python_example_data/``. The AIS files used here (points are lon/lat WGS84
degrees, UTC times, sampling about 60-90 s):

===============================================  ======================  ========  ==========
file                                             format                  points    tracks
===============================================  ======================  ========  ==========
``US_coastal_2020_06_30.traj``                   tracktable              235,967   1,395
``NYHarbor_2020_12_first_week.traj``             tracktable              172,679   513
``VirginiaBeach_2020_06_04_to_06_filtered.traj`` tracktable              39,822    125
``NYHarbor_2020_12_08.traj``                     tracktable              9,091     38
``NYHarbor_2020_06_30_first_hour.csv``           marinecadastre (CSV)    8,689     295 MMSI
===============================================  ======================  ========  ==========

``SMALL_SLICE`` (``NYHarbor_2020_12_08.traj``, one day of New York Harbor, 9,091 points, reads in
about 0.1 s) is the slice tests and smoke runs use.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

PACKAGE = "tracktable_data"
FOLDER = "python_example_data"

AIS_FILES: tuple[str, ...] = (
    "US_coastal_2020_06_30.traj",
    "NYHarbor_2020_12_first_week.traj",
    "VirginiaBeach_2020_06_04_to_06_filtered.traj",
    "NYHarbor_2020_12_08.traj",
    "NYHarbor_2020_06_30_first_hour.csv",
)
SMALL_SLICE = "NYHarbor_2020_12_08.traj"

# Named subsets accepted by ``embedded_files``.
SUBSETS: dict[str, tuple[str, ...]] = {
    "all": AIS_FILES,
    "small": (SMALL_SLICE,),
    "traj": tuple(f for f in AIS_FILES if f.endswith(".traj")),
    "csv": tuple(f for f in AIS_FILES if f.endswith(".csv")),
}


def embedded_dir() -> Path:
    """Folder holding the ``tracktable-data`` example files (needs the package installed)."""
    try:
        base = resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the embedded AIS dataset needs the 'tracktable-data' package: pip install 'trajfm[data]'"
        ) from exc
    folder = Path(str(base / FOLDER))
    if not folder.is_dir():
        raise FileNotFoundError(f"{PACKAGE} is installed but has no {FOLDER}/ folder (zipped install?)")
    return folder


def embedded_files(subset: str | list[str] | tuple[str, ...] | None = None) -> list[Path]:
    """Paths of the embedded AIS files.

    ``subset``: ``None`` or ``"all"`` (all five files), ``"small"`` (``SMALL_SLICE`` only),
    ``"traj"`` or ``"csv"`` (by format), a single file name, or a list of file names from
    ``AIS_FILES``. Raises ``ValueError`` for an unknown name.
    """
    if subset is None:
        names: tuple[str, ...] = AIS_FILES
    elif isinstance(subset, str):
        names = SUBSETS.get(subset, (subset,))
    else:
        names = tuple(subset)
    unknown = [n for n in names if n not in AIS_FILES]
    if unknown:
        raise ValueError(f"unknown embedded file(s) {unknown}; subsets {sorted(SUBSETS)} or files {list(AIS_FILES)}")
    folder = embedded_dir()
    paths = [folder / n for n in names]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"embedded files missing from the tracktable-data install: {missing}")
    return paths


# Names bundled data wherever sources are given: ``embedded:SUBSET`` (``embedded:small``, ``embedded:all``).
EMBEDDED_PREFIX = "embedded:"


def expand_data(data: str | os.PathLike | list) -> list[str]:
    """Sources as strings; ``embedded:SUBSET`` becomes the embedded AIS files it names."""
    items = data if isinstance(data, (list, tuple)) else [data]
    if not items:
        raise ValueError("no data given")
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if text.startswith(EMBEDDED_PREFIX):
            out.extend(str(p) for p in embedded_files(text[len(EMBEDDED_PREFIX) :] or None))
        else:
            out.append(text)
    return out
