"""Test-wide environment: keep Prefect, MLflow, GX and matplotlib out of $HOME and offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_TMP = Path(tempfile.mkdtemp(prefix="trajfm-tests-"))
os.environ.setdefault("PREFECT_HOME", str(_TMP / "prefect"))
os.environ.setdefault("MPLCONFIGDIR", str(_TMP / "mpl"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "true"
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("TRAJFM_HOME", None)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real files of ../shared/data; the test skips with a reason when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: real GeoLife/Liverpool files unavailable")
    return SHARED_DATA


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """The embedded NY Harbor day (``embedded_files("small")``) ingested into a fresh data root, once
    per test module: the ingest stage directory."""
    from trajfm.data.catalog import embedded_files
    from trajfm.data.ingest import ingest

    return ingest(embedded_files("small"), root=tmp_path_factory.mktemp("ingest_root"))
