"""Registry operations: champion/challenger rule and its tags, ``trajfm registry`` list/show/
promote/rollback, lineage (no new version for the same data + config + evaluation), and
registration surviving an unreachable MLflow (library call and the Prefect task's retry).

One SQLite store for the module (creating one costs seconds); each concern registers under its
own model name. Models are the ``tutorial`` preset shrunk to d=32, trained for 3 steps on
synthetic vessel windows, and evaluated for real.
"""

from __future__ import annotations

import json
import os
import socket

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

from synthetic_tracks import make_windows, one_torch_thread, stats_of  # noqa: E402, F401 (autouse fixture)
from trajfm.cli import main as trajfm_main  # noqa: E402
from trajfm.evaluate.run import run_evaluation  # noqa: E402
from trajfm.registry import log_and_register  # noqa: E402
from trajfm.registry.manage import CHALLENGER, CHAMPION, HISTORY_TAG, aliases_of  # noqa: E402
from trajfm.registry.register import register_training  # noqa: E402
from trajfm.registry.tracking import registry_client, tracking_uri  # noqa: E402
from trajfm.store import StageWriter  # noqa: E402
from trajfm.train import run_training  # noqa: E402

TINY = {"block_size": 32, "d_model": 32, "n_layer": 1, "n_head": 2, "dropout": 0.0}


def _stages(root):
    """A preprocess stage (its hash is the data hash), a features stage, two train stages."""
    with StageWriter(root, "preprocess", "fixture") as w:
        w.write_frame("points", pd.DataFrame({"traj_id": ["a", "a"], "lon": [-74.0, -74.01], "lat": [40.6, 40.61]}))
    train, test = make_windows(24, 90, 32, seed=10, stride=16), make_windows(8, 90, 32, seed=11)
    with StageWriter(root, "features", "fixture") as w:
        for split, ws in {"train": train, "val": test, "test": test}.items():
            ws.save(w.path / f"{split}.npz")
        w.write_json("stats", stats_of(train))
        w.manifest.update(upstream=str(root / "preprocess" / "fixture"), params={"window": 32, "note": "synthetic"})
    features = root / "features" / "fixture"
    trains = [
        run_training(
            features,
            root=root,
            preset="tutorial",
            model_overrides=TINY,
            train_overrides={
                "epochs": 1,
                "max_steps": 3,
                "batch_size": 16,
                "warmup_steps": 1,
                "seed": seed,
                "device": "cpu",
                "progress": False,
            },
        )
        for seed in (0, 1)
    ]
    return features, trains


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ops_root")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(key, raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        features, trains = _stages(root)
        yield {"root": root, "features": features, "trains": trains, "checkpoint": trains[0] / "model.pt"}
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def _register(env, name, ade, eval_id="set-A", **kw):
    return log_and_register(
        env["root"],
        run_name=f"{name}-{ade}",
        params={"preset": "tutorial"},
        metrics={"test_ade_m": ade},
        history=[],
        checkpoint_path=env["checkpoint"],
        name=name,
        eval_id=eval_id,
        **kw,
    )


def _cli(capsys, env, *argv):
    code = trajfm_main(["registry", *argv, "--data-root", str(env["root"])])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_champion_and_challenger_with_decision_tags(env):
    name = "rule"
    r = [_register(env, name, ade) for ade in (500.0, 400.0, 450.0, 400.0)]
    assert [x.decision for x in r] == ["champion", "champion", "challenger", "challenger"]  # a tie does not promote
    client = registry_client(env["root"])
    assert aliases_of(client, name) == {CHAMPION: 2, CHALLENGER: 4}  # challenger = latest non-champion
    tags = client.get_model_version(name, "3").tags
    assert tags["trajfm.promotion.decision"] == "challenger"
    assert tags["trajfm.promotion.metric"] == "test_ade_m" and float(tags["trajfm.promotion.value"]) == 450.0
    assert tags["trajfm.promotion.compared_with"] == "2" and float(tags["trajfm.promotion.compared_value"]) == 400.0
    assert "same evaluation set" in tags["trajfm.promotion.reason"] and tags["trajfm.promotion.time"].endswith("+00:00")
    assert client.get_model_version(name, "1").tags["trajfm.promotion.reason"].startswith("first version")
    history = json.loads(client.get_registered_model(name).tags[HISTORY_TAG])
    assert [h["version"] for h in history] == [1, 2] and history[1]["by"] == "registration"


def test_other_evaluation_set_is_not_compared_blindly(env):
    name = "evalset"
    _register(env, name, 500.0, eval_id="set-A")
    skipped = _register(env, name, 100.0, eval_id="set-B")  # far better, but on another set
    assert skipped.decision == "skipped" and not skipped.promoted and skipped.champion_version == 1
    assert "evaluation sets differ" in skipped.reason
    # When the caller can measure the champion on the new set, the comparison is made there.
    measured = _register(env, name, 100.0, eval_id="set-B", champion_metric_on_eval=lambda v: 120.0)
    assert measured.promoted and measured.previous_champion_metric == 120.0 and "re-measured" in measured.reason
    assert aliases_of(registry_client(env["root"]), name) == {CHAMPION: 3, CHALLENGER: 2}


def test_cli_list_show_promote_rollback(env, capsys):
    name = "cli"
    for ade in (500.0, 400.0, 450.0):
        _register(env, name, ade)
    code, out, _ = _cli(capsys, env, "list", "--name", name)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["version", "aliases", "metric", "value", "registered_as", "preset", "created", "data"]
    assert lines[1].split()[:5] == ["3", "challenger", "test_ade_m", "450.0", "challenger"]
    assert lines[2].split()[:2] == ["2", "champion"]
    code, out, _ = _cli(capsys, env, "list", "--name", name, "--json")
    rows = json.loads(out)
    assert [r["version"] for r in rows] == [3, 2, 1] and rows[1]["value"] == 400.0

    code, out, _ = _cli(capsys, env, "show", "--name", name, "--json")  # default: the champion
    info = json.loads(out)
    assert code == 0 and info["version"] == 2 and info["aliases"] == [CHAMPION]
    assert info["model_uri"] == f"models:/{name}/2" and info["promotion"]["decision"] == "champion"
    assert info["metrics"]["test_ade_m"] == 400.0
    code, out, _ = _cli(capsys, env, "show", "challenger", "--name", name)
    assert code == 0 and out.startswith(f"{name} version 3  aliases: challenger")
    assert "promotion   challenger: test_ade_m 450 not < champion v2 400 on the same evaluation set" in out
    code, out, _ = _cli(capsys, env, "show", "v1", "--name", name, "--json")
    assert code == 0 and json.loads(out)["version"] == 1

    code, out, _ = _cli(capsys, env, "promote", "3", "--name", name, "--reason", "better on the harbour", "--by", "ops")
    assert code == 0 and "champion -> version 3 (was 2)" in out
    client = registry_client(env["root"])
    assert aliases_of(client, name) == {CHAMPION: 3}  # never both champion and challenger
    manual = json.loads(client.get_model_version(name, "3").tags["trajfm.promotion.manual"])
    assert manual["by"] == "ops" and manual["reason"] == "better on the harbour" and manual["previous"] == 2

    code, out, _ = _cli(capsys, env, "rollback", "--name", name, "--reason", "regression")
    assert code == 0 and "from version 3 to version 2" in out
    assert aliases_of(client, name)[CHAMPION] == 2
    assert json.loads(client.get_model_version(name, "3").tags["trajfm.rolled_back"])["reason"] == "regression"
    code, out, _ = _cli(capsys, env, "rollback", "--name", name)
    assert code == 0 and aliases_of(client, name)[CHAMPION] == 1
    code, _, err = _cli(capsys, env, "rollback", "--name", name)
    assert code == 1 and "no previous champion" in err


def test_cli_errors_are_clear(env, capsys):
    _register(env, "errs", 300.0)
    code, _, err = _cli(capsys, env, "show", "7", "--name", "errs")
    assert code == 1 and "errs has no version '7'" in err and "champion->v1" in err
    code, _, err = _cli(capsys, env, "promote", "nosuchalias", "--name", "errs")
    assert code == 1 and "no alias 'nosuchalias'" in err
    code, _, err = _cli(capsys, env, "list", "--name", "never-registered")
    assert code == 1 and "no registered model named 'never-registered'" in err
    code, _, err = _cli(capsys, env, "promote", "1", "--alias", "42", "--name", "errs")
    assert code == 1 and "alias must be a name" in err
    empty = env["root"] / "empty"
    assert trajfm_main(["registry", "list", "--data-root", str(empty)]) == 1
    assert "no MLflow store" in capsys.readouterr().err and not (empty / "mlflow.db").exists()


def _metrics(env, train_dir, horizon=6):
    return run_evaluation(env["features"], train_dir, root=env["root"], context_len=12, horizon=horizon)


def test_lineage_tags_and_no_new_version_for_the_same_inputs(env, capsys):
    name = "lineage"
    train_a, train_b = env["trains"]
    first = register_training(train_a, env["features"], _metrics(env, train_a), root=env["root"], name=name)
    again = register_training(train_a, env["features"], _metrics(env, train_a), root=env["root"], name=name)
    assert first.version == 1 and not first.reused and first.promoted
    assert again.version == 1 and again.reused and not again.promoted and again.run_id == first.run_id
    client = registry_client(env["root"])
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    tags = client.get_model_version(name, "1").tags
    config = json.loads(tags["trajfm.config"])
    assert config["model"]["d_model"] == 32 and config["train"]["max_steps"] == 3 and config["features"]["window"] == 32
    assert config["eval"] == {"context_len": 12, "horizon": 6, "split": "test"}
    assert list(json.loads(tags["trajfm.data_hash"])) == ["points"] and tags["trajfm.code_version"]
    assert tags["trajfm.lineage_key"] == first.lineage_key and tags["trajfm.eval_id"]
    code, out, _ = _cli(capsys, env, "list", "--name", name, "--json")
    row = json.loads(out)[0]
    assert code == 0 and row["preset"] == "tutorial" and len(row["data"]) == 8

    other = register_training(train_b, env["features"], _metrics(env, train_b), root=env["root"], name=name)
    assert other.version == 2 and not other.reused and other.decision in ("champion", "challenger")
    assert other.previous_champion_metric == pytest.approx(first.metric_value)
    # Same model, another horizon: another evaluation set, so the champion is re-measured on it.
    longer = register_training(train_a, env["features"], _metrics(env, train_a, horizon=8), root=env["root"], name=name)
    assert longer.version == 3 and "re-measured" in longer.reason
    champion = client.get_model_version_by_alias(name, CHAMPION)
    if champion.version == "1":  # the very same model measured on the same set: a tie, not promoted
        assert longer.previous_champion_metric == pytest.approx(longer.metric_value) and not longer.promoted


def test_registration_interrupted_before_the_decision_is_finished_by_the_retry(env, monkeypatch):
    import trajfm.registry.manage as manage

    name = "interrupted"
    train_a = env["trains"][0]
    real = manage.decide
    monkeypatch.setattr(manage, "decide", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("registry went away")))
    with pytest.raises(ConnectionError):
        register_training(train_a, env["features"], _metrics(env, train_a), root=env["root"], name=name)
    monkeypatch.setattr(manage, "decide", real)
    done = register_training(train_a, env["features"], _metrics(env, train_a), root=env["root"], name=name)
    assert done.version == 1 and done.promoted and not done.reused  # the same version, now decided
    assert len(registry_client(env["root"]).search_model_versions(f"name='{name}'")) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens there


def _unreachable(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def test_unreachable_mlflow_fails_cleanly_and_the_retry_registers(env, monkeypatch):
    train_a = env["trains"][0]
    metrics = _metrics(env, train_a)
    before = sorted(p.name for p in train_a.iterdir())
    with monkeypatch.context() as mp:
        _unreachable(mp)
        with pytest.raises(Exception, match="127.0.0.1|Connection|connect"):
            register_training(train_a, env["features"], metrics, root=env["root"], name="fault")
    assert sorted(p.name for p in train_a.iterdir()) == before and (train_a / "model.pt").stat().st_size > 0
    assert "MLFLOW_TRACKING_URI" not in os.environ
    r = register_training(train_a, env["features"], metrics, root=env["root"], name="fault")
    assert r.version == 1 and r.promoted and tracking_uri(env["root"]).startswith("sqlite:")


@pytest.mark.slow
def test_register_task_retries_until_mlflow_answers(env, monkeypatch):
    """The Prefect task's own retries: attempt 1 meets a dead tracking server, attempt 2 works."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    import tasks.register as task_module

    attempts = []

    def flaky(*args, **kwargs):
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            with monkeypatch.context() as mp:
                _unreachable(mp)
                return register_training(*args, **kwargs)
        return register_training(*args, **kwargs)

    monkeypatch.setattr(task_module, "register_training", flaky)
    train_a = env["trains"][0]
    metrics = _metrics(env, train_a)

    @flow
    def tiny():
        return task_module.register_task.with_options(retry_delay_seconds=0)(
            str(train_a),
            str(env["features"]),
            metrics,
            data_root=str(env["root"]),
            name="task-retry",
        )

    with prefect_test_harness(server_startup_timeout=120):
        result = tiny()
    assert attempts == [1, 2] and result["version"] == 1 and result["promoted"]


def test_two_registrations_at_once_register_one_version(env):
    """Two runs finishing together with the same lineage: the lock makes one register, one reuse."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: _register(env, "race", 250.0, lineage_key="same-inputs"), range(2)))
    assert sorted(r.reused for r in results) == [False, True] and {r.version for r in results} == {1}
    assert len(registry_client(env["root"]).search_model_versions("name='race'")) == 1


NEW_STORE = """
import sys, time
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
from trajfm.registry.tracking import setup_mlflow
print(setup_mlflow(sys.argv[1], "concurrent"))
"""


def test_processes_opening_a_new_sqlite_store_at_once_all_succeed(tmp_path):
    """MLflow migrates a new mlflow.db on first open; three processes doing it at the same moment
    (two pipelines started together) must not collide (seen: ``table _alembic_tmp_tags already
    exists``). They meet the same experiment."""
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    start = time.time() + 8.0  # after every interpreter has imported mlflow
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", NEW_STORE, str(tmp_path / "root"), str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outs]
    assert len({out.strip().splitlines()[-1] for out, _ in outs}) == 1
