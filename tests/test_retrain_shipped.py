"""The nightly ``trajfm-retrain`` deployment as shipped in ``prefect.yaml``: on a fresh checkout
(no ``./incoming`` folder) a run is "nothing new" with a warning, not a failure (issue 20.3)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from trajfm.retrain import missing_watch_dir, new_files

REPO = Path(__file__).resolve().parents[1]


def _shipped_retrain_parameters() -> dict:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (deployment,) = [d for d in spec["deployments"] if d["name"] == "trajfm-retrain"]
    return dict(deployment["parameters"])


def test_a_missing_watch_dir_is_nothing_new_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trajfm.retrain"):
        assert new_files(tmp_path / "incoming", tmp_path / "root") == []
    assert "does not exist yet" in caplog.text and "incoming" in caplog.text
    assert "does not exist yet" in missing_watch_dir(str(tmp_path / "incoming" / "*.csv"))
    (tmp_path / "incoming").mkdir()
    assert missing_watch_dir(tmp_path / "incoming") is None
    assert new_files(tmp_path / "incoming", tmp_path / "root") == []  # empty folder: nothing new, no warning


def test_the_shipped_retrain_deployment_finishes_nothing_new_on_a_fresh_checkout(tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import NOTHING_NEW, retrain

    params = _shipped_retrain_parameters()
    assert params["watch_dir"] == "./incoming"
    checkout = tmp_path / "checkout"  # the process worker runs flows from the checkout
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.setenv("TRAJFM_HOME", str(tmp_path / "root"))  # data_root: null -> $TRAJFM_HOME
    with prefect_test_harness(server_startup_timeout=120):
        state = retrain(**params, return_state=True)
        assert state.is_completed(), state.message
        result = state.result()
    assert result["status"] == NOTHING_NEW and result["new_files"] == []
    assert not (checkout / "incoming").exists()  # nothing created behind the user's back
    assert not os.path.exists(tmp_path / "root" / "retrain" / "ledger.json")
