"""Scheduled retraining: the ledger of consumed files, fine-tuning from a checkpoint, and the
``retrain`` flow on real AIS files (from scratch, nothing new, then fine-tuning the champion)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)
from trajfm.data.catalog import SMALL_SLICE, embedded_files
from trajfm.retrain import new_files, read_ledger, record_consumed, watched_files

MODEL = dict(n_layer=1, n_head=2, d_model=16, block_size=32, dropout=0.0)
TRAIN = dict(epochs=1, batch_size=8, lr=3e-3, warmup_steps=1, seed=0, device="cpu")


# --- the ledger ---------------------------------------------------------------------------------


def test_new_files_are_those_not_consumed_and_edited_files_count_again(tmp_path):
    watch, root = tmp_path / "incoming", tmp_path / "root"
    watch.mkdir()
    assert new_files(watch, root) == []  # an empty folder: nothing new, no error
    small = shutil.copy(embedded_files(SMALL_SLICE)[0], watch / "day1.traj")
    (watch / "notes.txt").write_text("not a trajectory file")  # skipped by the scan
    first = new_files(watch, root)
    assert [Path(f["path"]).name for f in first] == ["day1.traj"]
    assert new_files(watch, root) == first  # not consumed yet: still new (a failed run re-sees it)

    record_consumed(first, root, run={"version": 1})
    assert new_files(watch, root) == []
    assert read_ledger(root)["files"][next(iter(read_ledger(root)["files"]))]["run"] == {"version": 1}

    shutil.copy(embedded_files("csv")[0], watch / "day2.csv")
    assert [Path(f["path"]).name for f in new_files(watch, root)] == ["day2.csv"]
    with open(small, "a") as f:  # edited in place: a new size and mtime -> new again
        f.write("\n")
    assert sorted(Path(f["path"]).name for f in new_files(watch, root)) == ["day1.traj", "day2.csv"]


def test_a_missing_watched_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        watched_files(tmp_path / "nope")


# --- fine-tuning from a checkpoint ------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    tr = make_windows(n_tracks=10, points=60, window=32, seed=10, stride=16)
    va = make_windows(n_tracks=3, points=60, window=32, seed=11)
    return tr, va, stats_of(tr)


def _train(out, data, **kw):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig, train

    tr, va, st = data
    return train(tr, va, GPTConfig(**MODEL), st, TrainConfig(**{**TRAIN, **kw}), out)


def test_init_checkpoint_starts_from_its_weights_and_normalization(data, tmp_path):
    from trajfm.model import load_checkpoint

    base = _train(tmp_path / "base", data)
    ckpt = load_checkpoint(base.last_checkpoint)
    tr, va, _ = data
    other_stats = {"mean": [0.0] * tr.x.shape[-1], "std": [1.0] * tr.x.shape[-1]}
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig, train

    zero = train(
        tr,
        va,
        GPTConfig(**MODEL),
        other_stats,
        TrainConfig(**TRAIN, max_steps=0, init_checkpoint=str(base.last_checkpoint)),
        tmp_path / "z",
    )
    for k, v in zero.model.state_dict().items():  # no step taken: exactly the checkpoint, stats included
        assert torch.equal(v, ckpt["model"][k]), k

    tuned = _train(tmp_path / "tuned", data, init_checkpoint=str(base.last_checkpoint))
    # the same epoch from the trained weights is better than the first epoch from scratch (== base)
    assert tuned.history[0]["train_loss"] < base.history[0]["train_loss"]
    assert tuned.history[0]["val_loss"] < base.history[0]["val_loss"]


def test_init_checkpoint_counts_by_content_not_path(data, tmp_path):
    from trajfm.train import TrainConfig
    from trajfm.train import config_identity as _config_identity

    a = _train(tmp_path / "a", data).last_checkpoint
    b = _train(tmp_path / "b", data, seed=1).last_checkpoint
    copy = shutil.copy(a, tmp_path / "copy.pt")
    ident = lambda p: _config_identity(TrainConfig(**TRAIN, init_checkpoint=str(p)))  # noqa: E731
    assert ident(a) == ident(copy) != ident(b)
    assert _config_identity(TrainConfig(**TRAIN))["init_checkpoint"] is None  # no checkpoint: None


def test_init_checkpoint_of_another_architecture_is_refused(data, tmp_path):
    from trajfm.model import GPTConfig
    from trajfm.train import TrainConfig, train

    a = _train(tmp_path / "a", data).last_checkpoint
    tr, va, st = data
    with pytest.raises(ValueError, match="another model config"):
        train(
            tr,
            va,
            GPTConfig(**{**MODEL, "d_model": 32}),
            st,
            TrainConfig(**TRAIN, init_checkpoint=str(a)),
            tmp_path / "x",
        )


# --- the flow ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_retrain_flow_from_scratch_then_nothing_new_then_fine_tunes_the_champion(tmp_path):
    from distributed import LocalCluster
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import NOTHING_NEW, retrain
    from trajfm.registry.tracking import champion_info
    from trajfm.store import file_sha256, read_manifest

    watch, root = tmp_path / "incoming", tmp_path / "root"
    watch.mkdir()
    shutil.copy(embedded_files(SMALL_SLICE)[0], watch / "day1.traj")
    # one small Dask cluster for every run (the flows connect to it by address, as to a remote one)
    cluster = LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    )
    kw = dict(
        watch_dir=str(watch),
        data_root=str(root),
        preset="tutorial",
        epochs=1,
        batch_size=64,
        dask_address=cluster.scheduler_address,
        context_len=12,
        horizon=6,
        train_overrides={"warmup_steps": 5, "max_steps": 20},
    )
    with cluster, prefect_test_harness(server_startup_timeout=120):
        first = retrain(**kw)
        assert first["status"] == "registered" and first["fine_tuned_from"] is None
        assert first["registration"]["version"] == 1 and champion_info(root)["version"] == 1
        assert first["eval_features_dir"] == first["features_dir"]

        again = retrain(**kw)
        assert again == {"status": NOTHING_NEW, "watch_dir": str(watch), "new_files": []}

        shutil.copy(embedded_files("csv")[0], watch / "day2.csv")  # a new day arrives (other format, same region)
        second = retrain(**{**kw, "context_len": 5, "horizon": 2})  # ignored: the champion's settings win
        assert [Path(p).name for p in second["new_files"]] == ["day2.csv"]
        assert second["fine_tuned_from"] == 1 and second["registration"]["version"] == 2
        # evaluated on the champion's evaluation set, with its settings
        assert second["eval_features_dir"] == first["features_dir"] != second["features_dir"]
        assert (second["metrics"]["context_len"], second["metrics"]["horizon"]) == (12, 6)
        tuned = read_manifest(second["train_dir"])
        champion_ckpt = next((root / "retrain" / "champions" / "trajfm-v1").rglob("*.pt"))
        # the registered champion is the calibrated model; fine-tuning starts from its uncalibrated weights
        from trajfm.evaluate.calibrate import uncalibrated_checkpoint
        from trajfm.model import load_model

        assert file_sha256(champion_ckpt) == file_sha256(Path(first["model_dir"]) / "model.pt")
        init = uncalibrated_checkpoint(champion_ckpt, root)
        assert tuned["init_checkpoint_sha256"] == file_sha256(init)
        trained_first = load_model(Path(first["train_dir"]) / "model.pt")
        assert load_model(init).config == trained_first.config
        assert all(
            a.equal(b) for a, b in zip(load_model(init).state_dict().values(), trained_first.state_dict().values())
        )
        # the champion moved only if v2 beat it on that set
        better = second["metrics"]["ade_m"] < first["metrics"]["ade_m"]
        assert champion_info(root)["version"] == (2 if better else 1)
        assert retrain(**kw)["status"] == NOTHING_NEW
    assert len(read_ledger(root)["files"]) == 2 and os.path.isfile(root / "retrain" / "ledger.json")
