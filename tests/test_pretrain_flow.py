"""End to end: the Prefect ``pretrain`` flow on a tiny corpus file of three real sources (Danish
AIS ships, Galapagos albatrosses, a Liverpool bus route: ~3,300 points), one short epoch, then
the ``pipeline`` flow fine-tuning from ``models:/trajfm-base@champion``."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml
from conftest import SHARED_DATA

from trajfm.store import read_manifest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "dropout": 0.0}


def tiny_corpus(path: Path) -> Path:
    corpus = SHARED_DATA / "corpus"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "temperature": 2.0,
                "coarsen": [1, 2],
                "sources": [
                    {
                        "name": "kattegat",
                        "paths": str(corpus / "dma_ais_kattegat_3ships.parquet"),
                        "format": "canonical",
                        "kind": None,
                        "weight": 2.0,
                    },
                    {
                        "name": "albatross",
                        "paths": str(corpus / "movebank_galapagos_albatross.parquet"),
                        "format": "canonical",
                        "kind": None,
                        "weight": 1.0,
                    },
                    {
                        "name": "liverpool_bus",
                        "paths": str(SHARED_DATA / "liverpool_bus" / "route14_outbound.csv"),
                        "format": "generic",
                        "kind": "bus",
                        "weight": 1.0,
                        "reader_params": {
                            "timezone": "Europe/London",
                            "columns": {
                                "traj_id": "trip_id",
                                "obj_id": "vehicle_id",
                                "t": "timestamp",
                                "lon": "longitude",
                                "lat": "latitude",
                            },
                        },
                    },
                ],
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def pretrained(prefect_api, tmp_path_factory):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}: the real corpus sources are unavailable")
    from flows.pretrain import pretrain

    root = tmp_path_factory.mktemp("root")
    corpus = tiny_corpus(tmp_path_factory.mktemp("corpora") / "tiny.yaml")
    result = pretrain(
        corpus=str(corpus),
        data_root=str(root),
        preset="base-small",
        model_overrides=SMALL_MODEL,
        epochs=1,
        max_steps=6,
        batch_size=8,
        window=32,
        max_windows=64,
        train_overrides={"warmup_steps": 2},
        context_len=12,
        horizon=6,
    )
    return root, corpus, result


def test_pretrain_flow_registers_trajfm_base_with_the_corpus_hash(pretrained):
    from mlflow import MlflowClient

    from trajfm.data.corpus import load_corpus
    from trajfm.registry.tracking import tracking_uri

    root, corpus, r = pretrained
    sha = load_corpus(corpus).sha256()
    assert r["corpus_sha256"] == sha and set(r["processed"]) == {"kattegat", "albatross", "liverpool_bus"}
    reg = r["registration"]
    assert reg["name"] == "trajfm-base" and reg["version"] == 1 and reg["champion_version"] == 1
    client = MlflowClient(tracking_uri=tracking_uri(root), registry_uri=tracking_uri(root))
    mv = client.get_model_version_by_alias("trajfm-base", "champion")
    assert int(mv.version) == 1 and mv.tags["trajfm.corpus_sha256"] == sha
    stage = read_manifest(r["pretrain_dir"])
    assert stage["lineage"]["corpus_sha256"] == sha and stage["final"]["step"] == 6
    assert set(stage["probabilities"]) <= set(r["processed"]) and sum(stage["probabilities"].values()) == pytest.approx(
        1.0
    )
    assert abs(sum(r["mixing"].values()) - 1.0) < 1e-9


def test_every_point_reaches_the_shards_or_is_accounted(pretrained):
    _, _, r = pretrained
    shards = json.loads((Path(r["shards_dir"]) / "shards.json").read_text())
    for name, src in shards["sources"].items():
        pre = read_manifest(r["processed"][name])
        assert src["points_in"] == pre["rows_out"], name
        assert src["view_points"] == src["points_in_shards"] + src["points_too_short"], name
        assert set(src["views"]) == {"1", "2"}  # the corpus' coarsen: native and 2x
    assert shards["params"]["coarsen"] == [1, 2]


def test_pipeline_fine_tunes_from_the_base_model(pretrained):
    import hashlib

    from flows.pipeline import pipeline
    from trajfm.data.catalog import SMALL_SLICE, embedded_files

    root, _, r = pretrained
    out = pipeline(
        sources=[str(p) for p in embedded_files(SMALL_SLICE)],
        data_root=str(root),
        preset="timesfm-patch-context",
        epochs=1,
        batch_size=64,
        train_overrides={"warmup_steps": 2, "max_steps": 3},
        context_len=12,
        horizon=6,
        init="models:/trajfm-base@champion",
    )
    train = read_manifest(out["train_dir"])
    base = read_manifest(r["pretrain_dir"])
    assert train["model_config"] == base["model_config"]  # the base model's architecture, not the preset's
    # the registered base is the calibrated one; fine-tuning starts from its weights without the rule
    from trajfm.evaluate.calibrate import uncalibrated_checkpoint
    from trajfm.model.checkpoint import load_checkpoint

    registered = Path(r["model_dir"]) / "model.pt"
    assert load_checkpoint(registered)["config"]["calibration"]["forecast_blend"] is not None
    init = uncalibrated_checkpoint(registered, root)
    assert train["init_checkpoint_sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    import torch

    pre, start = load_checkpoint(Path(r["pretrain_dir"]) / "model.pt"), load_checkpoint(init)
    assert all(torch.equal(pre["model"][k], start["model"][k]) for k in pre["model"])  # the pre-trained weights


def test_the_deployment_runs_the_pretrain_flow():
    from flows.pretrain import pretrain

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    d = {x["name"]: x for x in spec["deployments"]}["trajfm-pretrain"]
    assert d["entrypoint"] == "flows/pretrain.py:pretrain" and d["work_pool"]["name"] == "trajfm-process"
    signature = inspect.signature(pretrain.fn)
    assert set(d["parameters"]) <= set(signature.parameters)
    for p, value in d["parameters"].items():
        if value is None:
            assert signature.parameters[p].default is None, p
    assert "pretrain:" in (REPO / "Makefile").read_text() and "trajfm run pretrain" in (REPO / "Makefile").read_text()
    from trajfm.cli import FLOWS

    assert FLOWS["pretrain"] == ("flows.pretrain", "pretrain")


def test_init_names_a_registered_version_or_a_file(pretrained, tmp_path):
    from trajfm.registry.pretrained import resolve_init_checkpoint

    root, _, r = pretrained
    path = resolve_init_checkpoint("models:/trajfm-base@champion", root)
    assert (
        Path(path).read_bytes() == (Path(r["model_dir"]) / "model.pt").read_bytes()
    )  # the registered (calibrated) base
    assert resolve_init_checkpoint("models:/trajfm-base/1", root) == path  # downloaded once
    with pytest.raises(ValueError, match="no version of 'trajfm-base' has alias 'best'"):
        resolve_init_checkpoint("models:/trajfm-base@best", root)
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_init_checkpoint(str(tmp_path / "missing.pt"), root)
