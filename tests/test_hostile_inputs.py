"""Hostile inputs and faults (issue 19, readers / serving / registry half): each test reproduces
one defect found from outside through a public entry point and fails without its fix.

Every read checks rows_read == kept + quarantined and that every reason is a known code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from trajfm.data.readers import SourceFormatError, read_file
from trajfm.data.schema import REASONS

PLT_HEADER = [
    "Geolife trajectory",
    "WGS 84",
    "Altitude is in Feet",
    "Reserved 3",
    "0,2,255,My Track,0,0,2,8421376",
    "0",
]
GENERIC = {"traj_id": "id", "t": "t", "lon": "lon", "lat": "lat"}
REPO = Path(__file__).resolve().parents[1]


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


# --- 19.12: a quoted CSV field with a line break in it ---------------------------------------


def test_csv_quoted_field_with_line_break_is_quarantined_whole(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text(
        "id,t,lon,lat,note\n"
        "a,2020-01-01T00:00:00Z,1.0,2.0,ok\n"
        '"first\nline",2020-01-01T00:01:00Z,1.1,2.1,x\n'
        'a,2020-01-01T00:02:00Z,1.2,2.2,"one\ntwo\nthree"\n'
        'a,2020-01-01T00:03:00Z,1.3,2.3,"quoted, fine"\n'
    )
    r = read(path, format="generic", columns=GENERIC, kind="bus")
    assert r.rows_read == 7 and r.rows_kept == 2
    assert r.points["traj_id"].tolist() == ["g:a", "g:a"]  # no point with the id 'line"'
    assert r.quarantine["line"].tolist() == [3, 4, 5, 6, 7]
    assert set(r.quarantine["reason"]) == {"parse_error"}
    assert r.quarantine["detail"].str.contains("line break").all()


def test_csv_record_with_line_break_across_chunks(tmp_path):
    path = tmp_path / "g.csv"
    good = [f"a,2020-01-01T00:{i:02d}:00Z,1.{i},2.0" for i in range(10)]
    path.write_text("id,t,lon,lat\n" + "\n".join(good[:4] + ['"b', 'c",2020-01-01T01:00:00Z,1,2'] + good[4:]) + "\n")
    for chunk_rows in (1, 2, 3, 5, 1000):
        r = read(path, format="generic", columns=GENERIC, kind="bus", chunk_rows=chunk_rows)
        assert (r.rows_read, r.rows_kept) == (12, 10), chunk_rows
        assert r.quarantine["line"].tolist() == [6, 7], chunk_rows


def test_csv_broken_quote_costs_its_own_line_only(tmp_path):
    path = tmp_path / "g.csv"
    rows = [f"a,2020-01-01T00:{i:02d}:00Z,1.{i},2.0" for i in range(60)]
    rows[3] = 'a,"2020-01-01T00:03:00Z,1.3,2.0'  # never closed
    path.write_text("id,t,lon,lat\n" + "\n".join(rows) + "\n")
    r = read(path, format="generic", columns=GENERIC, kind="bus")
    assert r.rows_kept == 59 and r.quarantine["line"].tolist() == [5]


# --- 19.13: a header naming a column twice ----------------------------------------------------


def test_csv_duplicate_header_column_is_refused(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("id,t,lon,lat,lat\na,2020-01-01T00:00:00Z,1.0,2.0,3.0\n")
    with pytest.raises(SourceFormatError, match=r"g.csv, line 1: header names column\(s\) \['lat'\] more than once"):
        read(path, format="generic", columns=GENERIC, kind="bus")
    path.write_text("id,t,lon,lat,x,x\na,2020-01-01T00:00:00Z,1.0,2.0,3.0,4.0\n")  # not a mapped column: fine
    assert read(path, format="generic", columns=GENERIC, kind="bus").rows_kept == 1


# --- 19.14: a truncated .gz inside a directory -----------------------------------------------


def _truncated_gz(path, text: str) -> None:
    import gzip

    data = gzip.compress(text.encode())
    path.write_bytes(data[: len(data) // 2])


def _tdrive_lines(n: int) -> str:
    return "".join(f"1,2008-02-02 15:{i // 60:02d}:{i % 60:02d},116.5{i:04d},39.9{i:04d}\n" for i in range(n))


@pytest.mark.parametrize("size", [50, 60_000])  # truncated in the first block, and later on
def test_truncated_gz_in_a_directory_names_the_file(tmp_path, size):
    from trajfm.data.ingest import ingest

    folder = tmp_path / "taxis"
    folder.mkdir()
    (folder / "1.txt").write_text(_tdrive_lines(10))
    _truncated_gz(folder / "2.txt.gz", _tdrive_lines(size))
    with pytest.raises(SourceFormatError) as err:
        ingest([str(folder)], root=tmp_path / "root")
    message = str(err.value)
    assert str(folder / "2.txt.gz") in message and "truncated or corrupt gzip file" in message
    assert "\n" not in message


# --- 19.15: nanosecond timestamps -------------------------------------------------------------

NS_TIMES = ["2020-01-01T00:00:00.123456789Z", "2020-01-01T00:00:01.000000001Z"]


def _ns_expected():
    return [
        pd.Timestamp("2020-01-01 00:00:00.123456789", tz="UTC"),
        pd.Timestamp("2020-01-01 00:00:01.000000001", tz="UTC"),
    ]


def test_nanosecond_text_times_are_kept(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("id,t,lon,lat\n" + "".join(f"a,{t},1.{i},2.0\n" for i, t in enumerate(NS_TIMES)))
    r = read(path, format="generic", columns=GENERIC, kind="bus")
    assert str(r.points["t"].dtype) == "datetime64[ns, UTC]"
    assert r.points["t"].tolist() == _ns_expected()
    offset = tmp_path / "o.csv"  # a local offset, converted to UTC, keeps its nanoseconds too
    offset.write_text("id,t,lon,lat\na,2020-01-01T01:00:00.123456789+01:00,1.0,2.0\nb,2020-01-01 00:00:00.5,1,2\n")
    r = read(offset, format="generic", columns=GENERIC, kind="bus", timezone="Europe/London")
    assert r.points["t"].tolist()[0] == _ns_expected()[0]


def test_nanosecond_epoch_and_parquet_times_are_kept(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.csv"
    path.write_text("id,t,lon,lat\na,1577836800123456789,1.0,2.0\na,1577836801000000001,1.1,2.0\n")
    r = read(path, format="generic", columns=GENERIC, kind="bus", time_format="epoch_ns")
    assert r.points["t"].tolist() == _ns_expected()
    ts = pa.array([t.value for t in _ns_expected()], type=pa.timestamp("ns", tz="UTC"))
    pq.write_table(pa.table({"id": ["a", "a"], "t": ts, "lon": [1.0, 1.1], "lat": [2.0, 2.0]}), tmp_path / "p.parquet")
    r = read(tmp_path / "p.parquet", format="generic", columns=GENERIC, kind="bus")
    assert r.points["t"].tolist() == _ns_expected()


def test_absurd_years_still_quarantined_not_overflowed(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text(
        "id,t,lon,lat\na,1500-01-01T00:00:00Z,1,2\na,9999-01-01T00:00:00Z,1,2\na,2020-01-01T00:00:00.000000001Z,1,2\n"
    )
    r = read(path, format="generic", columns=GENERIC, kind="bus")
    assert r.quarantine["reason"].tolist() == ["bad_time", "bad_time"] and r.rows_kept == 1
    assert r.points["t"].iloc[0].nanosecond == 1


# --- 19.16: one clear line instead of a raw Arrow / Errno / Overflow / Memory error ----------


def test_list_typed_parquet_column_is_one_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["a", "a"], "t": ["2020-01-01T00:00:00Z"] * 2, "lon": [[1.0], [2.0]], "lat": [2.0, 2.0]})
    pq.write_table(table, tmp_path / "l.parquet")
    with pytest.raises(
        SourceFormatError, match=r"l.parquet: column\(s\) named in columns= hold lists or structs.*'lon': 'list<"
    ):
        read(tmp_path / "l.parquet", format="generic", columns=GENERIC, kind="bus")


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    from trajfm.model.checkpoint import load_model, save_checkpoint
    from trajfm.model.config import GPTConfig
    from trajfm.model.gpt import TrajGPT

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "model.pt", TrajGPT(GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=8)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.pt: not a readable checkpoint, truncated or corrupt") as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_absent_device_is_one_clear_error_before_any_work(tmp_path, capsys):
    import torch

    from trajfm.evaluate.cli import main

    absent = f"cuda:{torch.cuda.device_count() + 6}"
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--model",
                str(tmp_path / "nothing.pt"),
                "--data",
                str(tmp_path),
                "--device",
                absent,
                "--out",
                str(tmp_path / "o.json"),
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"trajfm evaluate: error: device '{absent}'") and "\n" not in err
    assert not (tmp_path / "o.json").exists()
    from trajfm.model.checkpoint import check_device

    assert str(check_device("cpu")) == "cpu"
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        check_device("gpu0")


def test_infinite_interval_and_huge_window_are_clear_errors():
    from trajfm.data.clean import PreprocessParams
    from trajfm.features.windows import MAX_WINDOW_POINTS, WindowParams

    for bad in (float("inf"), 1e30):
        with pytest.raises(ValueError, match="interval_s must be a finite number of seconds"):
            PreprocessParams(interval_s=bad)
    with pytest.raises(ValueError, match=f"window 1e\\+09 is above the limit of {MAX_WINDOW_POINTS} points"):
        WindowParams(window=1e9, stride=32)
    with pytest.raises(ValueError, match="window must be a whole number of points, got 32.5"):
        WindowParams(window=32.5)
    assert WindowParams(window=64.0, stride=64).window == 64  # a JSON 64.0 is 64 points


# --- 19.6: an unreachable tracking server ----------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_registry_unreachable_tracking_server_is_a_fast_clear_error(tmp_path, capsys):
    import time

    from trajfm.registry.cli import main

    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    started = time.perf_counter()
    rc = main(["list", "--tracking-uri", uri])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err.strip()
    assert rc == 1 and seconds < 30  # was 248 s of retries
    assert err.startswith(f"trajfm registry: error: cannot reach the MLflow tracking server at {uri}")
    assert "no registered model" not in err and "\n" not in err


def test_registry_only_a_missing_model_is_not_found():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, RESOURCE_DOES_NOT_EXIST

    from trajfm.registry.manage import RegistryError, require_model

    class Client:
        def __init__(self, code):
            self.code = code

        def get_registered_model(self, name):
            raise MlflowException("boom: database is locked", error_code=self.code)

    with pytest.raises(RegistryError, match="no registered model named 'trajfm'"):
        require_model(Client(RESOURCE_DOES_NOT_EXIST), "trajfm")
    with pytest.raises(MlflowException, match="database is locked"):
        require_model(Client(INTERNAL_ERROR), "trajfm")


# --- 19.17: credentials in a source URL ------------------------------------------------------


def test_redact_url_hides_credentials_only():
    from trajfm.store import redact, redact_url

    assert redact_url("s3://AKIAKEY:s3cr3t@bucket/ais/*.csv") == "s3://***@bucket/ais/*.csv"
    assert (
        redact_url("read https://user:pass@example.org/a.csv and gs://b/c")
        == "read https://***@example.org/a.csv and gs://b/c"
    )
    assert redact_url("s3://bucket/a@b.csv") == "s3://bucket/a@b.csv"  # an @ in a path is not a password
    assert redact_url("/data/me@host/x.csv") == "/data/me@host/x.csv"
    nested = {"sources": ["s3://k:v@b/x.csv", "/local.csv"], "n": 3, "opts": ("https://u:p@h/y",)}
    assert redact(nested) == {"sources": ["s3://***@b/x.csv", "/local.csv"], "n": 3, "opts": ("https://***@h/y",)}


# --- 19.7 / 19.20: serving limits, coordinates, the reason of a 400 --------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The pyfunc with a tiny untrained model (seeded), as the scoring server holds it."""
    pytest.importorskip("mlflow")
    import torch

    from trajfm.model.checkpoint import save_checkpoint
    from trajfm.model.config import GPTConfig
    from trajfm.model.gpt import TrajGPT
    from trajfm.registry.pyfunc import TrajFMPyfunc

    torch.manual_seed(0)
    path = save_checkpoint(
        tmp_path_factory.mktemp("m") / "model.pt", TrajGPT(GPTConfig(n_layer=1, n_head=1, d_model=8, block_size=8))
    )
    from trajfm.forecaster import load

    model = TrajFMPyfunc()
    model.forecaster = load(path)  # what load_context does with the model's checkpoint artifact
    model.model = model.forecaster.model
    return model


def _bad_request(model, points, params):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        model.predict(None, points, params)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400, this message on top
    return err.value.message


def test_serving_bounds_horizon_and_request_size(served, monkeypatch):
    from trajfm.registry.pyfunc import example_points
    from trajfm.registry.request import DEFAULT_MAX_HORIZON

    points = example_points(2, 6)
    assert len(served.predict(None, points, {"horizon": 3})) == 6
    message = _bad_request(served, points, {"horizon": 100_000})
    assert f"params.horizon must be between 1 and {DEFAULT_MAX_HORIZON} steps, got 100000" in message
    for bad in (0, -5, 2.5, "ten", True):
        assert "params.horizon" in _bad_request(served, points, {"horizon": bad})
    monkeypatch.setenv("TRAJFM_SERVE_MAX_POINTS", "10")
    assert "the request holds 12 points; the limit is 10" in _bad_request(served, points, {"horizon": 3})
    monkeypatch.delenv("TRAJFM_SERVE_MAX_POINTS")
    monkeypatch.setenv("TRAJFM_SERVE_MAX_FORECAST_STEPS", "5")
    assert "2 trajectories x horizon 3 = 6 forecast steps; the limit is 5" in _bad_request(
        served, points, {"horizon": 3}
    )


@pytest.mark.parametrize(
    "column, value", [("lon", 500.0), ("lat", -300.0), ("lon", float("nan")), ("lat", float("inf")), ("lon", -180.5)]
)
def test_serving_refuses_coordinates_that_are_not_wgs84(served, column, value):
    from trajfm.registry.pyfunc import example_points

    points = example_points(2, 6)
    points.loc[3, column] = value
    message = _bad_request(served, points, {"horizon": 2})
    assert "1 points are not WGS84 degrees" in message and "row 3" in message


def test_serving_400_carries_the_reason(served):
    from trajfm.registry.pyfunc import example_points

    points = example_points(2, 6)
    points.loc[0, "t"] = "yesterday-ish"
    assert "bad forecast request" in _bad_request(served, points, {"horizon": 2})
    lone = example_points(2, 6).iloc[:7]  # example-1 keeps one point
    assert "1 trajectories have fewer than 2 points, e.g. ['example-1']" in _bad_request(served, lone, {"horizon": 2})
    assert "input lacks columns ['lat']" in _bad_request(served, example_points(1, 4).drop(columns="lat"), None)


@pytest.mark.slow
def test_models_serve_400_reason_and_sigterm_stops_the_server(tmp_path, monkeypatch):
    """End to end: ``mlflow models serve`` answers an oversized horizon and lon 500 with HTTP 400
    and the reason in ``message``; SIGTERM to the ``mlflow`` process stops the server even with
    the largest allowed rollout in flight (MLflow passes SIGTERM on through PR_SET_PDEATHSIG;
    uvicorn then waits for the running request, which the limits keep short)."""
    import json
    import os
    import signal
    import time
    import urllib.error
    import urllib.request

    pytest.importorskip("mlflow")
    import test_serving as ts

    from trajfm.registry.pyfunc import example_points
    from trajfm.registry.tracking import tracking_uri

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    assert ts._register(root).promoted
    port = _free_port()
    proc = ts._start(
        [
            ts.MLFLOW,
            "models",
            "serve",
            "-m",
            "models:/trajfm@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        ts._server_env(MLFLOW_TRACKING_URI=tracking_uri(root)),
        tmp_path,
    )

    def ask(points, params):
        body = {"dataframe_split": points.to_dict(orient="split", index=False), "params": params}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        assert ts._wait_for(f"http://127.0.0.1:{port}/ping", 120, proc), "model server did not answer /ping"
        started = time.perf_counter()
        status, body = ask(example_points(1, 8), {"horizon": 100_000})
        assert status == 400 and "params.horizon must be between 1 and 500 steps" in body["message"], body
        assert time.perf_counter() - started < 30  # refused up front, no rollout
        bad = example_points(1, 8)
        bad.loc[2, "lon"] = 500.0
        status, body = ask(bad, {"horizon": 2})
        assert status == 400 and "not WGS84 degrees" in body["message"], body
        status, _ = ask(example_points(1, 8), {"horizon": 2})
        assert status == 200
        import threading

        # The largest rollout allowed is in flight when SIGTERM comes: the server finishes it and
        # stops (before: a 100000-step rollout kept it, and a core, busy long after the signal).
        threading.Thread(target=ask, args=(example_points(1, 8), {"horizon": 500}), daemon=True).start()
        time.sleep(1.0)
        signalled = time.perf_counter()
        os.kill(proc.pid, signal.SIGTERM)  # the mlflow CLI only, as `kill PID` does
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _port_open(port):
            time.sleep(0.5)
        assert not _port_open(port), "the server kept listening after SIGTERM"
        print(f"server gone {time.perf_counter() - signalled:.1f} s after SIGTERM with a 500-step rollout in flight")
    finally:
        ts._stop(proc)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # an orphaned server too (the group outlives its leader)
        except ProcessLookupError:
            pass


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


SECRET = "s3cr3tPW"


def test_credentials_in_a_source_url_never_reach_the_data_root_or_messages(tmp_path):
    import subprocess

    import fsspec

    from trajfm.data.ingest import ingest

    url = f"memory://AKIAKEY:{SECRET}@bucket-{tmp_path.name}/taxi/1.txt"
    with fsspec.open(url, "w") as f:
        f.write("1,2008-02-02 15:00:00,116.5,39.9\n1,2008-02-02 15:01:00,116.51,39.91\n1,bad,116.5,39.9\n")
    out = ingest([url], root=tmp_path / "root")
    assert subprocess.run(["grep", "-rl", SECRET, str(tmp_path / "root")], capture_output=True).stdout == b""
    assert pd.read_parquet(out / "quarantine.parquet")["file"].tolist() == [
        f"memory://***@bucket-{tmp_path.name}/taxi/1.txt"
    ]
    assert "memory://***@" in (out / "manifest.json").read_text()
    with pytest.raises(FileNotFoundError) as err:
        ingest([f"memory://AKIAKEY:{SECRET}@nowhere/none.txt"], root=tmp_path / "root")
    assert SECRET not in str(err.value) and "memory://***@nowhere/none.txt" in str(err.value)
    bad = f"memory://AKIAKEY:{SECRET}@bucket-{tmp_path.name}/g.plt"
    with fsspec.open(bad, "w") as f:
        f.write("not geolife\n")
    with pytest.raises(SourceFormatError) as err:
        read_file(bad, format="geolife")
    assert SECRET not in str(err.value)


def test_flow_run_parameters_are_stored_redacted():
    pytest.importorskip("prefect")
    from flows.ingest import ingest_flow
    from flows.pipeline import pipeline

    sources = [f"s3://AKIAKEY:{SECRET}@bucket/ais/", "https://user:pw@example.org/a.csv", "/data/local.csv"]
    for fl in (ingest_flow, pipeline):
        stored = fl.serialize_parameters({"sources": sources, "data_root": "/tmp/r"})  # what Prefect's DB gets
        assert stored == {
            "sources": ["s3://***@bucket/ais/", "https://***@example.org/a.csv", "/data/local.csv"],
            "data_root": "/tmp/r",
        }


def test_task_error_message_is_redacted():
    pytest.importorskip("prefect")
    from tasks.ingest import _describe

    assert _describe([f"s3://AKIAKEY:{SECRET}@bucket/ais/"]) == "s3://***@bucket/ais/"


# --- 19.18: what a SIGKILL leaves behind ----------------------------------------------------


def test_stage_temp_dir_of_a_killed_writer_is_removed_by_the_next_run(tmp_path):
    import textwrap

    from trajfm.store import StageWriter, is_complete

    root = tmp_path / "root"
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from trajfm.store import StageWriter
        w = StageWriter(Path({str(root)!r}), "ingest", "0123456789abcdef")
        (w.path / "points.parquet").write_bytes(b"half")
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-stage
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9
    left = [p.name for p in (root / "ingest").iterdir()]
    assert len(left) == 1 and left[0].startswith(".0123456789abcdef.")
    live = StageWriter(root, "ingest", "fedcba9876543210")  # a writer in progress (this process): kept
    with StageWriter(root, "ingest", "0123456789abcdef") as w:
        w.write_json("x", {"a": 1})
    names = sorted(p.name for p in (root / "ingest").iterdir())
    assert names == sorted(["0123456789abcdef", live.path.name]) and is_complete(root / "ingest" / "0123456789abcdef")


@pytest.mark.slow
def test_orphaned_prefect_temporary_server_is_stopped_by_the_next_run(tmp_path):
    """A run SIGKILLed while Prefect's temporary server runs leaves the server orphaned; the next
    ``trajfm`` command on the same data root (same PREFECT_HOME) stops it."""
    import signal
    import textwrap
    import time

    pytest.importorskip("prefect")
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding orphaned servers reads /proc (Linux only)")
    from trajfm.cli import _prepare_env
    from trajfm.orphans import orphaned_prefect_servers

    home = tmp_path / "prefect"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PYTHONPATH": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    script = textwrap.dedent("""
        import os, signal, sys
        from prefect.server.api.server import SubprocessASGIServer
        server = SubprocessASGIServer()
        server.start(timeout=150)
        print(server.server_process.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the run dies; atexit never stops the server
    """)
    # The server inherits stdout: read the pid line, not to EOF (the orphan keeps the pipe open).
    run = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    line = run.stdout.readline()
    assert run.wait(timeout=200) == -9 and line.strip().isdigit(), line
    server = int(line)
    run.stdout.close()
    try:
        time.sleep(0.5)
        assert orphaned_prefect_servers(home) == [server]
        assert orphaned_prefect_servers(tmp_path / "other-home") == []  # another data root's: left alone
        old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "TRAJFM_HOME", "PREFECT_API_URL")}
        os.environ["PREFECT_HOME"] = str(home)
        os.environ.pop("PREFECT_API_URL", None)
        try:
            _prepare_env(str(tmp_path / "root"))  # what every trajfm command does first
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{server}").exists():
            time.sleep(0.2)
        assert not Path(f"/proc/{server}").exists() or "Z" in Path(f"/proc/{server}/stat").read_text().split(")")[1][:3]
    finally:
        try:
            os.kill(server, signal.SIGKILL)
        except ProcessLookupError:
            pass
