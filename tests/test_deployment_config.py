"""prefect.yaml declares the pipeline, retrain and evaluate deployments with parameters the flows
really take, a nightly cron for retraining, one process pool, and no credentials."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def deployments() -> dict[str, dict]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def flow_of(entrypoint: str):
    path, name = entrypoint.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    if not hasattr(module, name):
        pytest.skip(f"{path} has no {name} yet")
    return getattr(module, name)


@pytest.mark.parametrize("name", ["trajfm-pipeline", "trajfm-retrain", "trajfm-evaluate"])
def test_deployment_parameters_are_accepted_by_its_flow(name):
    d = deployments()[name]
    assert d["work_pool"]["name"] == "trajfm-process"
    assert (REPO / d["entrypoint"].split(":")[0]).is_file()
    flow = flow_of(d["entrypoint"])
    signature = inspect.signature(flow.fn)
    accepted = set(signature.parameters)
    assert set(d["parameters"]) <= accepted, set(d["parameters"]) - accepted
    required = {p for p, v in signature.parameters.items() if v.default is inspect.Parameter.empty}
    if name != "trajfm-evaluate":  # evaluate's dataset is given at run time
        assert required <= set(d["parameters"]), required - set(d["parameters"])
    for p, value in d["parameters"].items():  # null only where the flow accepts None
        if value is None:
            assert signature.parameters[p].default is None, p


def test_pipeline_exposes_the_scale_out_knobs():
    params = set(deployments()["trajfm-pipeline"]["parameters"])
    assert {"sources", "preset", "epochs", "data_root", "dask_address", "nproc"} <= params


def test_retrain_runs_nightly_on_a_cron():
    from prefect.client.schemas.schedules import CronSchedule

    d = deployments()["trajfm-retrain"]
    assert d["entrypoint"] == "flows/retrain.py:retrain"
    (schedule,) = d["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad cron or zone
    assert schedule["active"] is True
    fields = schedule["cron"].split()
    assert fields[2:] == ["*", "*", "*"] and fields[0].isdigit() and fields[1].isdigit()  # once a day
    assert schedule["timezone"] == "UTC"
    assert {"watch_dir", "format", "data_root", "preset", "epochs"} <= set(d["parameters"])


def test_evaluate_deployment_takes_a_model_uri_and_a_dataset():
    d = deployments()["trajfm-evaluate"]
    assert d["entrypoint"] == "flows/evaluate.py:evaluate_model_flow"
    assert "model_uri" in d["parameters"]
    # the dataset is given per run: a null default would fail the server's parameter schema
    assert "data" not in d["parameters"]
    signature = inspect.signature(flow_of(d["entrypoint"]).fn)
    assert signature.parameters["data"].default is inspect.Parameter.empty


def test_prefect_yaml_carries_no_credentials():
    text = (REPO / "prefect.yaml").read_text().lower()
    for word in ("password", "secret", "token", "api_key", "apikey", "://user", "@"):
        assert word not in text.replace("models:/trajfm@champion", ""), word
