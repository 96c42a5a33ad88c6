"""Hostile inputs and faults through the pipeline, the cache and the checks before it (issue 19:
items 1-4, 8-10, 19; issue 20 item 4). Real data: the embedded NY Harbor AIS slice.

The first tests need no Prefect (preflight, CLI, cached-record checks, kinds, empty stages, the
Dask environment); the ``slow`` ones start Prefect's temporary API once and run the pipeline.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from trajfm.data.catalog import SMALL_SLICE, embedded_files
from trajfm.data.clean import clean_partition
from trajfm.data.ingest import ingest, load_points
from trajfm.preflight import (
    PreflightError,
    check_data_root,
    check_model_name,
    check_preset,
    check_sources,
)
from trajfm.store import is_complete, read_manifest

REPO = Path(__file__).resolve().parents[1]
SOURCES = [str(p) for p in embedded_files(SMALL_SLICE)]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
    env.pop("TRAJFM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "trajfm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
        check=False,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("trajfm: error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    return ingest(SOURCES, root=tmp_path_factory.mktemp("ingest_root"))


# --- 19.2: an empty source list, an empty folder, a folder without trajectory files -------------


def test_empty_sources_are_an_error_never_the_demo_data(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("no trajectories here\n")
    (notes / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.raises(PreflightError, match="empty list"):
        check_sources([])
    with pytest.raises(PreflightError, match="no trajectory files"):
        check_sources([str(empty)])
    with pytest.raises(PreflightError, match="no readable files|no trajectory files"):
        check_sources([str(notes)])
    assert check_sources(None) is None  # left out: the embedded data
    assert check_sources(SOURCES) == SOURCES


@pytest.mark.parametrize("sources", ["[]", "EMPTY_DIR"])
def test_cli_pipeline_with_empty_sources_fails_before_any_stage(tmp_path, sources):
    root = tmp_path / "root"
    if sources == "EMPTY_DIR":
        (tmp_path / "incoming").mkdir()
        sources = json.dumps([str(tmp_path / "incoming")])
    proc = run_cli("run", "pipeline", "--sources", sources, "--data-root", str(root))
    assert_one_line_error(proc, "sources" if sources == "[]" else "no trajectory files")
    assert not (root / "ingest").exists() and not (root / "prefect").exists()


# --- 19.19 + 20.4: preset and model name checked first; one-line CLI errors ------------------------


def test_train_unknown_preset_is_one_line_naming_the_presets(tmp_path):
    proc = run_cli("train", "--preset", "nope", "--data-root", str(tmp_path / "root"))
    line = assert_one_line_error(proc, "unknown model preset 'nope'", "known presets:", "tutorial", "trajgpt2-small")
    assert proc.stdout == ""
    assert not (tmp_path / "root" / "ingest").exists(), line  # no stage ran


@pytest.mark.parametrize("name", ["a/b", "models:/x", "x@champion", "", " trajfm"])
def test_invalid_model_name_is_refused_before_training(tmp_path, name):
    with pytest.raises(PreflightError, match="invalid model name"):
        check_model_name(name)
    check_model_name("trajfm-ais_v2.1")


def test_cli_pipeline_bad_model_name_and_bad_preset_fail_before_any_stage(tmp_path):
    root = tmp_path / "root"
    assert_one_line_error(
        run_cli("run", "pipeline", "--model-name", "a/b", "--data-root", str(root)), "invalid model name 'a/b'"
    )
    assert_one_line_error(run_cli("run", "pipeline", "--preset", "nope", "--data-root", str(root)), "known presets:")
    assert not (root / "ingest").exists() and not (root / "prefect").exists()


def test_check_preset_accepts_bundled_names_and_preset_files(tmp_path):
    check_preset("tutorial")
    path = tmp_path / "mine.json"
    path.write_text((REPO / "trajfm" / "model" / "presets" / "tutorial.json").read_text())
    check_preset(str(path))
    with pytest.raises(PreflightError, match="known presets: .*tutorial"):
        check_preset("tutorial.json")  # not a file here, and not a bundled name


def test_training_child_refusing_its_configuration_is_a_value_error(tmp_path):
    """The train task's child exits with CONFIG_ERROR_EXIT on a bad preset; the task raises a
    ValueError (never retried) instead of a RuntimeError (retried twice)."""
    import logging

    from tasks._common import is_deterministic
    from tasks.train import supervise, training_command

    cmd = training_command(str(tmp_path / "features"), str(tmp_path / "root"), "nope", {}, {})
    with pytest.raises(ValueError, match="unknown model preset 'nope'") as info:
        supervise(cmd, progress=None, logger=logging.getLogger("test"))
    assert is_deterministic(info.value)


def test_deterministic_errors_are_not_retried_and_others_are():
    from tasks._common import is_deterministic

    try:
        try:
            raise FileNotFoundError("points.parquet")
        except FileNotFoundError as exc:
            raise RuntimeError("ingest of x failed") from exc
    except RuntimeError as wrapped:
        assert is_deterministic(wrapped)
    assert is_deterministic(ValueError("unknown key"))
    assert not is_deterministic(RuntimeError("training process failed (signal SIGKILL)"))
    assert not is_deterministic(ConnectionError("MLflow unreachable"))
    assert not is_deterministic(TimeoutError())


# --- 19.10: a data root that cannot be written ------------------------------------------------------


def test_data_root_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(PreflightError, match="cannot create the data root"):
        check_data_root(blocker / "root")
    proc = run_cli("run", "pipeline", "--data-root", str(blocker / "root"))
    assert_one_line_error(proc, "cannot create the data root", str(blocker / "root"))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_data_root_is_refused_in_one_line(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(PreflightError, match="is not writable"):
            check_data_root(root)
        assert_one_line_error(run_cli("run", "pipeline", "--data-root", str(root)), "not writable")
    finally:
        root.chmod(0o755)


# --- 19.3: cached result records are JSON only -------------------------------------------------------


class _Planted:
    """Unpickling this object runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def pickle_record(value) -> bytes:
    return json.dumps(
        {
            "metadata": {
                "storage_key": "x",
                "expiration": None,
                "serializer": {"type": "pickle", "picklelib": "pickle"},
            },
            "result": base64.b64encode(pickle.dumps(value)).decode(),
        }
    ).encode()


def json_record(value, **serializer) -> bytes:
    return json.dumps(
        {
            "metadata": {"storage_key": "x", "expiration": None, "serializer": {"type": "json", **serializer}},
            "result": json.dumps(value),
        }
    ).encode()


def test_result_records_other_than_plain_json_are_refused(tmp_path, ingested):
    from tasks._common import (
        UnusableCachedResult,
        check_cached_value,
        check_result_record,
    )

    marker = tmp_path / "marker"
    with pytest.raises(UnusableCachedResult, match="pickle"):
        check_result_record(pickle_record(_Planted(marker)))
    with pytest.raises(UnusableCachedResult, match="class"):
        check_result_record(json_record({"__class__": "subprocess.Popen", "data": ["touch", str(marker)]}))
    with pytest.raises(UnusableCachedResult, match="decoder"):
        check_result_record(json_record("x", object_decoder="os.system"))
    with pytest.raises(UnusableCachedResult):
        check_result_record(b"\x80\x05garbage")
    assert not marker.exists()
    assert check_result_record(json_record(str(ingested))) == str(ingested)
    check_cached_value(str(ingested))
    with pytest.raises(UnusableCachedResult, match="missing or incomplete"):
        check_cached_value({"train_dir": str(ingested.parent.parent / "train" / "0123456789abcdef")})


def test_a_stage_directory_missing_a_file_is_not_complete(tmp_path):
    out = ingest(SOURCES, root=tmp_path)
    assert is_complete(out)
    assert "points.parquet" in read_manifest(out)["contents"]
    (out / "points.parquet").unlink()
    assert not is_complete(out)
    again = ingest(SOURCES, root=tmp_path)  # the library rebuilds it instead of returning it
    assert again == out and is_complete(out) and len(load_points(out)) == 9091


# --- 19.8: kinds in another case, kinds nobody configured ------------------------------------------


def test_kind_case_is_normalised_and_unknown_kinds_quarantined(ingested, tmp_path):
    points = load_points(ingested)
    trajs = points["traj_id"].unique()
    kind = points["kind"].astype(str).to_numpy(dtype=object)
    kind[points.index[points["traj_id"] == trajs[0]][0]] = "Vessel"  # one row, another spelling
    sub = (points["traj_id"] == trajs[1]).to_numpy()
    kind[sub] = "submarine"  # a whole track of a kind without parameters
    odd = points.assign(kind=pd.Categorical(kind))
    # Through ingest (a generic CSV with a kind column), as a user would bring it.
    csv = tmp_path / "tracks.csv"
    odd.assign(t=odd["t"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")).drop(columns=["source"]).to_csv(csv, index=False)
    columns = {"traj_id": "traj_id", "obj_id": "obj_id", "t": "t", "lon": "lon", "lat": "lat", "kind": "kind"}
    out = ingest([str(csv)], root=tmp_path / "root", params={"format": "generic", "columns": columns})
    m = read_manifest(out)
    assert m["rows_read"] == m["rows_kept"] + m["rows_quarantined"] == len(points)
    assert sorted(load_points(out)["kind"].astype(str).unique()) == ["submarine", "vessel"]  # "Vessel" -> "vessel"

    for frame in (odd, load_points(out)):
        cleaned, quarantine, counts = clean_partition(frame)
        assert counts["rows_in"] == counts["rows_kept"] + counts["rows_quarantined"] == len(points)
        unknown = quarantine[quarantine["reason"] == "unknown_kind"]
        assert len(unknown) == int(sub.sum()) == counts["quarantined_by_reason"]["unknown_kind"]
        assert unknown["detail"].str.contains("kind 'submarine' has no preprocessing parameters").all()
        assert set(cleaned["kind"].astype(str).unique()) <= {"vessel", "Vessel"}
        assert len(cleaned) > 0
    _, _, plain_counts = clean_partition(points[~sub])
    assert counts["rows_kept"] == plain_counts["rows_kept"]  # the "Vessel" row was cleaned as a vessel


def test_a_partition_of_only_unknown_kinds_is_all_quarantined(ingested):
    points = load_points(ingested)
    odd = points.assign(kind=pd.Categorical(["drone"] * len(points)))
    cleaned, quarantine, counts = clean_partition(odd)
    assert (
        len(cleaned) == 0
        and counts["rows_quarantined"] == len(points) == (quarantine["reason"] == "unknown_kind").sum()
    )


# --- 19.9: an empty stage fails its gate ------------------------------------------------------------


def test_an_empty_stage_fails_the_raw_gate_and_features_say_why(tmp_path, ingested):
    from trajfm.data.preprocess import preprocess
    from trajfm.features.windows import make_features
    from trajfm.quality import ValidationFailed, gate, validate_points

    junk = tmp_path / "junk.csv"
    junk.write_text("traj_id,t,lon,lat\n" + "".join(f"a,2020-06-30T00:0{i}:00Z,not-a-number,40.6\n" for i in range(5)))
    out = ingest(
        [str(junk)],
        root=tmp_path / "root",
        params={
            "format": "generic",
            "kind": "vessel",
            "columns": {"traj_id": "traj_id", "t": "t", "lon": "lon", "lat": "lat"},
        },
    )
    m = read_manifest(out)
    assert m["rows_read"] == 5 and m["rows_kept"] == 0 and m["rows_quarantined"] == 5
    report = validate_points(load_points(out), stage="raw")
    assert not report.success
    with pytest.raises(ValidationFailed, match="raw points: the stage has 0 rows"):
        gate(report)
    # A preprocess stage that kept nothing (every track too short) stops features with one clear error.
    pre = preprocess(ingested, root=tmp_path / "root2", scheduler="sync", params={"min_points": 10**6})
    assert read_manifest(pre)["rows_out"] == 0
    with pytest.raises(ValueError, match="has 0 points: nothing to cut into windows"):
        make_features(pre, root=tmp_path / "root2")


# --- 19.4: the LocalCluster leaves the environment as it found it -----------------------------------


def test_local_cluster_preprocess_leaves_os_environ_unchanged(ingested, tmp_path, monkeypatch):
    from trajfm.data.preprocess import WORKER_ENV, preprocess

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # set by the user: must come back as it was
    for key in WORKER_ENV:
        if key != "OMP_NUM_THREADS":
            monkeypatch.delenv(key, raising=False)
    before = dict(os.environ)
    out = preprocess(ingested, root=tmp_path, scheduler="distributed", n_workers=1)
    assert read_manifest(out)["dask"]["scheduler"] == "distributed-local"
    changed = {
        k: (before.get(k), os.environ.get(k))
        for k in set(before) | set(os.environ)
        if before.get(k) != os.environ.get(k)
    }
    assert changed == {}, changed
    # So the trainer's child process (it inherits os.environ) starts the same either way.
    from tasks.train import training_command

    cmd = training_command("f", None, "tutorial", {}, {})
    probe = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {sorted(WORKER_ENV)!r}}}))"
    seen = json.loads(subprocess.run([cmd[0], "-c", probe], capture_output=True, text=True, check=True).stdout)
    assert seen == {k: before.get(k) for k in sorted(WORKER_ENV)}


# --- slow: the pipeline under Prefect -------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


PIPELINE_ARGS = {
    "epochs": 1,
    "batch_size": 64,
    "train_overrides": {"warmup_steps": 10},
    "context_len": 12,
    "horizon": 6,
    "n_workers": 1,
}
STAGE_KEYS = {"ingest": "ingest_dir", "preprocess": "preprocess_dir", "features": "features_dir", "train": "train_dir"}


@pytest.fixture(scope="module")
def first_run(prefect_api, tmp_path_factory):
    from flows.pipeline import pipeline

    root = tmp_path_factory.mktemp("root")
    return root, pipeline(sources=SOURCES, data_root=str(root), **PIPELINE_ARGS)


def storage_dir() -> Path:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    return Path(PREFECT_LOCAL_STORAGE_PATH.value())


def record_of(value) -> Path:
    """The stored result record whose value is ``value`` (written by the JSON serializer)."""
    for path in storage_dir().iterdir():
        try:
            record = json.loads(path.read_bytes())
        except ValueError:
            continue
        if not isinstance(record, dict) or "metadata" not in record:  # a subflow's bare JSON result
            continue
        if record["metadata"]["serializer"]["type"] == "json" and json.loads(record["result"]) == value:
            return path
    raise AssertionError(f"no JSON result record holds {value!r}")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["ingest", "preprocess", "features", "train", "evaluate", "ingest-points-file"])
def test_rerun_after_deleting_a_stage_directory_recomputes_it(first_run, damage):
    """Issue 19.1: the task cache no longer hands back a directory that is gone or incomplete."""
    from flows.pipeline import pipeline

    root, r = first_run
    stage = damage.split("-")[0]
    victim = Path(r[STAGE_KEYS[stage]]) if stage in STAGE_KEYS else next((root / "evaluate").iterdir())
    if damage.endswith("points-file"):
        (victim / "points.parquet").unlink()
    else:
        shutil.rmtree(victim)
    again = pipeline(sources=SOURCES, data_root=str(root), **PIPELINE_ARGS)
    assert again["metrics"] == r["metrics"]
    for key in STAGE_KEYS.values():
        assert again[key] == r[key] and is_complete(Path(again[key])), key
    if stage in STAGE_KEYS:
        assert is_complete(victim)


@pytest.mark.slow
def test_planted_pickle_in_the_result_store_is_never_unpickled(first_run, tmp_path):
    """Issue 19.3: a record planted where Prefect reads the ingest task's cached result is not
    executed; the task runs again, stores JSON, and the next run is a cache hit again."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.pipeline import pipeline

    root, r = first_run
    assert_no_pickle_in_result_storage()  # everything the pipeline stored is JSON
    record = record_of(r["ingest_dir"])
    marker = tmp_path / "pwned"
    record.write_bytes(pickle_record(_Planted(marker)))

    again = pipeline(sources=SOURCES, data_root=str(root), **PIPELINE_ARGS)
    assert not marker.exists()
    assert again["metrics"] == r["metrics"] and again["ingest_dir"] == r["ingest_dir"]
    assert json.loads(record.read_bytes())["metadata"]["serializer"]["type"] == "json"
    stamp = record.stat().st_mtime_ns

    third = pipeline(sources=SOURCES, data_root=str(root), **PIPELINE_ARGS)
    assert third["ingest_dir"] == r["ingest_dir"] and record.stat().st_mtime_ns == stamp
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="ingest")),
            sort=TaskRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
    assert runs[0].state.name == "Cached"


@pytest.mark.slow
def test_missing_source_file_is_not_retried(prefect_api, tmp_path):
    """Issue 20.4: a FileNotFoundError fails the task at the first attempt (no 2 retries)."""
    from prefect import flow
    from prefect.client.orchestration import get_client

    from tasks.ingest import ingest_task

    @flow(result_serializer="json")  # as trajfm's flows: their failures are stored as JSON too
    def ingest_missing():
        return ingest_task([str(tmp_path / "gone.csv")], data_root=str(tmp_path / "root"))

    state = ingest_missing(return_state=True)
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs()
    ours = [t for t in runs if t.flow_run_id == state.state_details.flow_run_id]
    assert len(ours) == 1 and ours[0].run_count == 1, [(t.name, t.run_count) for t in ours]
    assert_no_pickle_in_result_storage()  # the failed task's and flow's exceptions are stored as JSON


def assert_no_pickle_in_result_storage() -> None:
    for path in storage_dir().iterdir():
        content = path.read_bytes()
        json.loads(content)  # a record, or a JSON-serialized exception: never a pickle
        assert b'"type":"pickle"' not in content.replace(b" ", b""), path


@pytest.mark.slow
def test_pipeline_on_a_file_without_valid_rows_stops_at_the_raw_gate(prefect_api, tmp_path):
    from flows.pipeline import pipeline

    junk = tmp_path / "junk.csv"
    junk.write_text("traj_id,t,lon,lat\n" + "".join(f"a,2020-06-30T00:0{i}:00Z,x,40.6\n" for i in range(5)))
    root = tmp_path / "root"
    state = pipeline(
        sources=[str(junk)],
        data_root=str(root),
        return_state=True,
        ingest_params={
            "format": "generic",
            "kind": "vessel",
            "columns": {"traj_id": "traj_id", "t": "t", "lon": "lon", "lat": "lat"},
        },
    )
    assert state.is_failed()
    message = str(state.message) + repr(state.result(raise_on_failure=False))
    assert "the stage has 0 rows" in message and "IndexError" not in message
    assert_no_pickle_in_result_storage()
    assert not (root / "features").exists() and not (root / "preprocess").exists()


def test_pretrain_sources_are_corpus_names_not_paths(tmp_path):
    """`trajfm run pretrain --sources '["hurdat2_storms"]'` names corpus entries: the CLI's
    preflight must not refuse them as missing files (it did: 'source not found')."""
    from trajfm.cli import _preflight

    _preflight(
        "pretrain",
        {"sources": ["hurdat2_storms", "embedded_ais"], "data_root": str(tmp_path / "root"), "preset": "base-small"},
    )
    with pytest.raises(PreflightError, match="source not found|no trajectory files"):
        _preflight("ingest", {"sources": ["hurdat2_storms"], "data_root": str(tmp_path / "root")})


def test_single_node_torchrun_rendezvous_listens_on_loopback_only(tmp_path):
    """Issue 19.21: torchrun's --standalone rendezvous store listens on every interface; a
    single-node data-parallel run binds it to 127.0.0.1 (a free port), and --torchrun-args for
    several nodes replace it."""
    from tasks.train import training_command

    cmd = training_command(str(tmp_path), str(tmp_path), "tutorial", {}, {}, 2, None)
    assert "--standalone" not in cmd
    endpoint = cmd[cmd.index("--rdzv-endpoint") + 1]
    host, port = endpoint.rsplit(":", 1)
    assert host == "127.0.0.1" and 0 < int(port) < 65536
    assert cmd[cmd.index("--nnodes") + 1] == "1" and cmd[cmd.index("--nproc_per_node") + 1] == "2"
    multi = training_command(
        str(tmp_path), str(tmp_path), "tutorial", {}, {}, 2, ["--nnodes", "2", "--rdzv-endpoint", "head:29400"]
    )
    assert "127.0.0.1" not in " ".join(multi) and "head:29400" in multi


def test_every_flow_stores_json_results_and_redacts_its_parameters():
    """Every flow of flows/ is built by the project's decorator (flows._redact.flow): JSON results,
    not persisted, URL credentials redacted in the run record. A flow written with Prefect's own
    decorator would store its failures as pickles and its parameters in clear."""
    import importlib
    import pkgutil

    from prefect.flows import Flow

    import flows
    from flows._redact import RedactingFlow

    found = {}
    for m in pkgutil.iter_modules(flows.__path__):
        for obj in vars(importlib.import_module(f"flows.{m.name}")).values():
            if isinstance(obj, Flow):
                found[obj.name] = obj
    assert {
        "pipeline",
        "retrain",
        "pretrain",
        "ingest",
        "preprocess",
        "validate",
        "features",
        "train",
        "calibrate",
        "evaluate",
        "evaluate-model",
        "register",
    } <= set(found)
    for name, fl in found.items():
        assert isinstance(fl, RedactingFlow), name
        assert fl.result_serializer == "json" and fl.persist_result is False, name
