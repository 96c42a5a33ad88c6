"""A data root copied elsewhere works there and never touches the original (issue 20.2): the
original is moved away after the copy, then the copy's registry is listed and shown, its
champion evaluated on real AIS, loaded through MLflow's pyfunc and ``trajfm.load``, and nothing
recreates the original path."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd
import pytest
from test_evaluate_cli import train_tiny


@pytest.fixture(scope="module")
def copied(tmp_path_factory):
    from trajfm.evaluate.run import run_evaluation
    from trajfm.registry.register import register_training
    from trajfm.store import read_manifest

    base = tmp_path_factory.mktemp("movable")
    original = base / "original"
    train_dir = train_tiny(original, steps=6)
    features_dir = read_manifest(train_dir)["features_dir"]
    metrics = run_evaluation(features_dir, train_dir, root=original, context_len=12, horizon=6)
    reg = register_training(train_dir, features_dir, metrics, root=original)
    copy = base / "elsewhere" / "copy"
    shutil.copytree(original, copy)
    gone = base / "gone"
    original.rename(gone)  # the original path no longer exists: any use of it fails or recreates it
    return original, copy, gone, reg


def _paths_in_store(database, needle: str) -> list[tuple[str, str, str]]:
    found = []
    with sqlite3.connect(database) as con:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
            for col in [r[1] for r in con.execute(f"PRAGMA table_info({table})")]:
                for (value,) in con.execute(
                    f"SELECT {col} FROM {table} WHERE CAST({col} AS TEXT) LIKE ?", (f"%{needle}%",)
                ):
                    found.append((table, col, str(value)[:120]))
    return found


def test_the_copy_works_on_its_own_and_never_touches_the_original(copied, capsys):
    import mlflow

    import trajfm
    from trajfm.evaluate.suite import evaluate_model
    from trajfm.registry.cli import main as registry_main
    from trajfm.registry.tracking import global_uris, tracking_uri

    original, copy, gone, _ = copied
    assert tracking_uri(copy) == f"sqlite:///{copy / 'mlflow.db'}"
    assert _paths_in_store(copy / "mlflow.db", str(original) + "/") == []  # rebased on first use
    assert _paths_in_store(copy / "mlflow.db", str(copy) + "/mlartifacts")  # ...to the copy's own artifacts
    for mlmodel in (copy / "mlartifacts").rglob("MLmodel"):
        assert str(original) + "/" not in mlmodel.read_text()

    assert registry_main(["list", "--data-root", str(copy)]) == 0
    assert registry_main(["show", "--data-root", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "trajfm" in out and str(original) + "/" not in out

    result = evaluate_model("models:/trajfm@champion", "embedded:small", tasks="forecast", root=copy)
    assert result["metrics"]["forecast.ade_m@10.model"] > 0
    assert all(str(copy) in p for p in result["stages"].values() if p)

    points = pd.read_parquet(sorted(copy.glob("preprocess/*/points.parquet"))[0])
    some = points[points["traj_id"].isin(points["traj_id"].unique()[:2])]
    with global_uris(tracking_uri(copy)):
        model = mlflow.pyfunc.load_model("models:/trajfm@champion")
    served = model.predict(
        some[["traj_id", "t", "lon", "lat"]].assign(t=some["t"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")),
        params={"horizon": 3},
    )
    assert len(served) == 6
    assert len(trajfm.load("models:/trajfm@champion", data_root=copy).forecast(some, horizon=3)) == 6
    assert not original.exists(), "something recreated or wrote the original root"
    assert (gone / "mlflow.db").is_file()


def test_a_root_in_place_is_left_as_it_is(copied):
    from trajfm.registry.tracking import rebase_moved_store

    _, _, gone, _ = copied
    # "gone" is itself a moved root; rebasing it is what a user moving it back would get.
    before = (gone / "mlflow.db").stat().st_mtime_ns
    assert rebase_moved_store(gone) is not None and rebase_moved_store(gone) is None
    assert (gone / "mlflow.db").stat().st_mtime_ns >= before
    assert _paths_in_store(gone / "mlflow.db", str(gone) + "/mlartifacts")
