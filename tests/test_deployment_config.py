"""prefect.yaml declares the pipeline deployment with parameters the flow really takes."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_deployment_matches_the_flow():
    from flows.pipeline import pipeline

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    d = deployments["trajfm-pipeline"]
    assert d["entrypoint"] == "flows/pipeline.py:pipeline"
    assert d["work_pool"]["name"] == "trajfm-process"
    accepted = set(inspect.signature(pipeline.fn).parameters)
    assert set(d["parameters"]) <= accepted, set(d["parameters"]) - accepted
    assert {"sources", "preset", "epochs", "data_root", "dask_address"} <= set(d["parameters"])


def test_prefect_yaml_carries_no_credentials():
    text = (REPO / "prefect.yaml").read_text().lower()
    for word in ("password", "secret", "token", "api_key", "apikey"):
        assert word not in text
