"""Hostile inputs and faults (issue 19, readers / serving / registry half): each test reproduces
one defect found from outside through a public entry point and fails without its fix.

Every read checks rows_read == kept + quarantined and that every reason is a known code.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trajfm.data.readers import SourceFormatError, read_file
from trajfm.data.schema import REASONS

PLT_HEADER = ["Geolife trajectory", "WGS 84", "Altitude is in Feet", "Reserved 3", "0,2,255,My Track,0,0,2,8421376", "0"]
GENERIC = {"traj_id": "id", "t": "t", "lon": "lon", "lat": "lat"}


def read(path, **kwargs):
    """Read and check the accounting and the reason codes."""
    r = read_file(path, **kwargs)
    assert r.rows_read == r.rows_kept + r.rows_quarantined
    assert set(r.quarantine["reason"]) <= set(REASONS)
    return r


def plt_fix(i: int) -> str:
    return f"39.98{i:04d},116.31{i:04d},0,492,39744.12{i:04d},2008-10-23,02:53:{i:02d}"


# --- 19.5: GeoLife .plt with a header line missing -------------------------------------------


@pytest.mark.parametrize("missing", range(1, 6))
def test_geolife_missing_header_line_loses_no_fix(tmp_path, missing):
    header = PLT_HEADER[:missing] + PLT_HEADER[missing + 1 :]
    path = tmp_path / "010" / "Trajectory" / "20081023025304.plt"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(header + [plt_fix(i) for i in range(5)]) + "\n")
    r = read(path)
    assert r.rows_read == 5 and r.rows_kept == 5
    assert r.points["t"].iloc[0] == pd.Timestamp("2008-10-23 02:53:00", tz="UTC")


def test_geolife_full_header_and_a_bad_line_where_the_header_ends(tmp_path):
    path = tmp_path / "a.plt"
    path.write_text("\n".join(PLT_HEADER + ["garbage line"] + [plt_fix(i) for i in range(3)]) + "\n")
    r = read(path)
    assert (r.rows_read, r.rows_kept, r.rows_quarantined) == (4, 3, 1)
    assert r.quarantine["line"].tolist() == [7]


def test_geolife_real_files_read_as_before(shared_data):
    files = sorted((shared_data / "geolife").rglob("*.plt"))[:20]
    for f in files:
        r = read(f)
        body = [ln for ln in f.read_text().splitlines()[6:] if ln.strip()]
        assert r.rows_read == len(body), f
