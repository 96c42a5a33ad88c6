"""The flows' parameters: described in Prefect's run form, closed choices as drop-downs, and the
dict parameters as models that refuse typos, NaN and strings where a flag belongs (issues 18,
19.11, 20.5). No Prefect server: the schema and the validation are computed from the flows."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import yaml

from trajfm import params as P
from trajfm.cli import FLOWS, _load_flow, check_params, flow_help, main
from trajfm.evaluate.params import EvaluateParams

REPO = Path(__file__).resolve().parents[1]


def _deployments():
    return yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]


def _schema(flow) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow).model_dump()


@pytest.mark.parametrize("deployment", [d["name"] for d in _deployments()])
def test_every_deployment_parameter_has_a_description_and_preset_is_a_drop_down(deployment):
    from prefect.flows import load_flow_from_entrypoint

    dep = next(d for d in _deployments() if d["name"] == deployment)
    schema = _schema(load_flow_from_entrypoint(str(REPO / dep["entrypoint"])))
    undescribed = [k for k, v in schema["properties"].items() if not v.get("description")]
    assert not undescribed, f"{deployment}: no description for {undescribed}"
    assert "``" not in str(schema), "RST backticks in the form"
    if "preset" in schema["properties"]:
        preset = schema["properties"]["preset"]
        from trajfm.model.config import list_presets

        assert preset["enum"] == list_presets()
        default = P.DEFAULT_PRETRAIN_PRESET if dep["entrypoint"].startswith("flows/pretrain.py") else P.DEFAULT_PRESET
        assert preset["default"] == default
        assert dep["parameters"]["preset"] == default  # one default, in prefect.yaml too
    # the dict parameters are models: the form shows their fields, each described
    for name, model in schema.get("definitions", {}).items():
        for field, spec in model.get("properties", {}).items():
            assert spec.get("description"), f"{deployment}: {name}.{field} has no description"


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_every_flow_parameter_has_a_description(name):
    schema = _schema(_load_flow(name))
    assert all(v.get("description") for v in schema["properties"].values()), name


def test_pipeline_and_retrain_share_the_parameter_models():
    import inspect

    pipe = inspect.signature(_load_flow("pipeline").fn, eval_str=True).parameters
    retrain = inspect.signature(_load_flow("retrain").fn, eval_str=True).parameters
    for key in ("preset", "ingest_params", "preprocess_params", "window_params", "quality_params", "train_overrides"):
        assert pipe[key].annotation is retrain[key].annotation or pipe[key].annotation == retrain[key].annotation, key


def test_models_cover_every_library_field():
    from trajfm.data.clean import PreprocessParams
    from trajfm.data.ingest import DEFAULT_PARAMS, PERFORMANCE_PARAMS
    from trajfm.features.windows import WindowParams
    from trajfm.model.config import list_presets
    from trajfm.quality.suites import PROCESSED_CHECKS
    from trajfm.train import TrainConfig

    assert set(P.KindPreprocess.model_fields) == {f.name for f in dataclasses.fields(PreprocessParams)}
    assert set(P.WindowOptions.model_fields) == {f.name for f in dataclasses.fields(WindowParams)}
    assert set(P.TrainOverrides.model_fields) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(P.IngestOptions.model_fields) == set(DEFAULT_PARAMS) | set(PERFORMANCE_PARAMS)
    assert P.QUALITY_CHECKS == PROCESSED_CHECKS
    assert list(P.PRESETS) == list_presets()


@pytest.mark.parametrize(
    "value, needle",
    [
        ({"vesel": {"v_max_mps": 25}}, "unknown key(s) ['vesel']"),  # a typo in a kind
        ({"vessel": {"v_max": 25}}, "unknown key(s) ['v_max']"),  # a typo in a threshold
        ({"min_duration_s": math.nan}, "finite number"),
        ({"vessel": {"generalize_s": math.inf}}, "finite number"),
        ({"split_stops": "no"}, "valid boolean"),  # would switch stop splitting on
        ({"interval_s": -5}, "greater than 0"),
    ],
)
def test_preprocess_params_refuse_typos_nan_and_strings_for_flags(value, needle):
    with pytest.raises(P.ParamsError) as exc:
        P.parse(P.PreprocessOptions, value)
    assert needle in str(exc.value) and "\n" not in str(exc.value)
    if "unknown" in needle:  # the error lists what is known
        assert "known:" in str(exc.value) and "vessel" in str(exc.value)


@pytest.mark.parametrize(
    "raw",
    [
        {"interval_s": 30.0},
        {"split_stops": True},
        {"vessel": {"v_max_mps": 25.0}},
        {"vessel": {"v_max_mps": 25.0}, "*": {"interval_s": 5.0}},
    ],
)
def test_preprocess_model_means_what_the_plain_dict_means(raw):
    from trajfm.data.clean import params_to_json

    assert params_to_json(P.parse(P.PreprocessOptions, raw).to_params()) == params_to_json(raw)


def test_flat_thresholds_with_kind_entries_apply_to_every_kind():
    from trajfm.data.clean import KIND_DEFAULTS, normalize_params

    table = normalize_params(P.parse(P.PreprocessOptions, {"interval_s": 20.0, "bus": {"v_max_mps": 20.0}}).to_params())
    assert all(p.interval_s == 20.0 for p in table.values()) and set(KIND_DEFAULTS) <= set(table)
    assert table["bus"].v_max_mps == 20.0 and table["vessel"].v_max_mps == KIND_DEFAULTS["vessel"].v_max_mps


def test_evaluate_params_check_task_names_and_task_keys():
    with pytest.raises(P.ParamsError, match=r"unknown key\(s\) \['forecst'\].*known: \['forecast'"):
        P.parse(EvaluateParams, {"forecst": {"horizons": [1]}})
    with pytest.raises(P.ParamsError, match=r"unknown key\(s\) \['horizon'\] for task 'forecast'.*horizons"):
        P.parse(EvaluateParams, {"forecast": {"horizon": 5}})
    ok = P.parse(EvaluateParams, {"forecast": {"horizons": [1, 5]}})
    assert ok.to_params() == {"forecast": {"horizons": [1, 5]}}


def test_window_and_train_models_refuse_nonsense():
    with pytest.raises(P.ParamsError, match="window"):
        P.parse(P.WindowOptions, {"window": 0})
    with pytest.raises(P.ParamsError, match="split_by"):
        P.parse(P.WindowOptions, {"split_by": "random"})
    with pytest.raises(P.ParamsError, match=r"unknown key\(s\) \['epoch'\].*epochs"):
        P.parse(P.TrainOverrides, {"epoch": 3})
    with pytest.raises(P.ParamsError, match="finite"):
        P.parse(P.TrainOverrides, {"lr": math.inf})
    assert P.parse(P.TrainOverrides, {"warmup_steps": 10}).to_params() == {"warmup_steps": 10}


def test_the_flow_refuses_bad_params_before_running():
    """What a deployment run or a direct call meets: Prefect validates into the models."""
    from prefect.exceptions import ParameterTypeError

    pipeline = _load_flow("pipeline")
    with pytest.raises(ParameterTypeError, match="vesel"):
        pipeline.validate_parameters({"preprocess_params": {"vesel": {}}})
    with pytest.raises(ParameterTypeError, match="preset"):
        pipeline.validate_parameters({"preset": "nope"})
    ok = pipeline.validate_parameters({"preprocess_params": {"vessel": {"v_max_mps": 25}}, "epochs": 1})
    assert isinstance(ok["preprocess_params"], P.PreprocessOptions)


def test_cli_parses_plain_json_into_the_models_and_fails_in_one_line():
    params = check_params(
        "pipeline", {"preprocess_params": {"split_stops": True}, "window_params": {"window": 16}, "epochs": 1}
    )
    assert params["preprocess_params"].to_params() == {"split_stops": True}
    assert params["window_params"].to_params() == {"window": 16}
    with pytest.raises(SystemExit) as exc:
        check_params("pipeline", {"preprocess_params": {"split_stops": "no"}, "preset": "nope"})
    msg = str(exc.value)
    assert "\n" not in msg and "--preprocess-params" in msg and "--preset" in msg and "tutorial" in msg
    with pytest.raises(SystemExit, match=r"unknown parameter\(s\) \['epoch'\]; known: .*--epochs"):
        check_params("pipeline", {"epoch": 1})
    # one string where a list is expected, as in `trajfm evaluate --data embedded:small`
    assert check_params("ingest", {"sources": "embedded:small"})["sources"] == ["embedded:small"]


def test_ingest_flow_expands_embedded_subsets():
    """``embedded:small`` names the bundled slice in ``run ingest --sources`` as in ``evaluate``."""
    pytest.importorskip("tracktable_data")
    from trajfm.data.catalog import SMALL_SLICE, embedded_files
    from trajfm.evaluate.suite import expand_data

    assert expand_data(["embedded:small"]) == [str(p) for p in embedded_files(SMALL_SLICE)]


def test_run_help_lists_each_parameter_with_its_description(capsys):
    text = flow_help("pipeline")
    assert "``" not in text and "`" not in text
    for param in ("--sources", "--preset", "--preprocess-params", "--train-overrides", "--torchrun-args"):
        assert param in text
    assert "Cleaning thresholds" in text and "v_max_mps" in text  # a model's description and its keys
    assert main(["run", "pipeline", "--help"]) == 0
    assert "--window-params" in capsys.readouterr().out


def test_flows_lists_one_readable_line_per_flow(capsys):
    assert main(["flows"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert [line.split()[0] for line in lines[: len(FLOWS)]] == list(FLOWS)
    assert "(" not in lines[0].split()[1] and "->" not in out and "``" not in out  # not a raw signature


@pytest.mark.slow
def test_run_ingest_takes_embedded_small_and_ends_with_a_summary(tmp_path):
    """A fresh process, as a user types it: the data root's Prefect home is used (the environment
    is prepared before Prefect is imported), and the run ends with a summary, not a JSON dump."""
    import os
    import subprocess
    import sys

    pytest.importorskip("tracktable_data")
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_HOME", "TRAJFM_HOME", "PREFECT_API_URL")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "trajfm.cli", "run", "ingest", "--sources", "embedded:small", "--data-root", str(root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()
    assert out[0].startswith("trajfm run ingest: finished in")
    assert "rows_read 9,091" in proc.stdout and "{" not in proc.stdout  # the NY Harbor slice; no JSON
    assert (root / "prefect").is_dir()  # Prefect's state went under the data root


def test_evaluate_cli_checks_task_params_in_one_line(capsys):
    for params, needle in (
        ('{"forecst": {}}', "unknown key(s) ['forecst']"),
        ('{"forecast": {"horizon": 5}}', "unknown key(s) ['horizon'] for task 'forecast'"),
        ('{"forecast": {"horizons": [1, NaN]}}', "must be finite"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["evaluate", "--model", "m.pt", "--data", "embedded:small", "--out", "o.json", "--params", params])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv", [["--help"], ["evaluate", "--help"], ["report", "--help"], ["registry", "--help"], ["run", "--help"]]
)
def test_help_texts_carry_no_rst_backticks(argv, capsys):
    import contextlib

    with pytest.raises(SystemExit) if argv != ["run", "--help"] else contextlib.nullcontext():
        main(argv)
    assert "``" not in capsys.readouterr().out


def test_run_summary_is_short_lines_not_json(tmp_path):
    from trajfm.cli import run_summary

    result = {
        "status": "registered",
        "new_files": ["a.csv", "b.csv"],
        "metrics": {"ade_m": 812.345, "fde_m": 1500.0, "n_windows": 30, "error_by_step_m": [1.0, 2.0]},
        "train_dir": str(tmp_path),
    }
    text = run_summary("retrain", result, 12.3)
    lines = text.splitlines()
    assert lines[0] == "trajfm run retrain: finished in 12 s"
    assert "  status: registered" in lines and "  new_files: 2 item(s): a.csv, b.csv" in lines
    assert any(line.startswith("  metrics: ade_m 812.3, fde_m 1500.0, n_windows 30") for line in lines)
    assert "{" not in text and "[" not in text


def test_the_library_entry_points_default_to_the_one_preset_constant():
    """``run_training``, ``python -m trajfm.train`` and the protocol runner of ``trajfm evaluate``
    take their default preset from ``trajfm.defaults`` (once: "tutorial" in seven signatures)."""
    import inspect

    from trajfm.defaults import DEFAULT_PRESET
    from trajfm.evaluate import cli as evaluate_cli
    from trajfm.train import stage

    assert P.DEFAULT_PRESET == DEFAULT_PRESET
    assert inspect.signature(stage.run_training).parameters["preset"].default == DEFAULT_PRESET
    assert evaluate_cli.build_parser().get_default("preset") == DEFAULT_PRESET
    assert '"--preset", default=DEFAULT_PRESET' in inspect.getsource(stage.main)
