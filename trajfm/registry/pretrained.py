"""Register a pre-trained model (the ``pretrain`` stage's ``model.pt``) as ``trajfm-base``.

Evaluation: forecasts from the first ``context_len`` points of the test windows of the shards
(at most ``max_windows``, taken shard by shard in manifest order, so memory stays bounded),
ADE/FDE in metres next to constant velocity (``trajfm.evaluate.forecast.evaluate_forecast``).
Lineage: the corpus ``sha256()`` (``trajfm.corpus_sha256``), its name, the shards and pretrain
stage keys and the code version are tags of the run and the version. ``champion`` moves by the
project's rule (``trajfm.registry.manage``): the first version takes it, a later one only when
better on the same evaluation set; registering the same lineage again returns that version.
"""

from __future__ import annotations

import json
from pathlib import Path

from trajfm.store import read_manifest, stable_hash

BASE_NAME = "trajfm-base"


def evaluation_sample(shards_dir: str | Path, context_len: int, horizon: int, max_windows: int = 4000):
    """Up to ``max_windows`` test windows with ``context_len + horizon`` real points, shard by shard."""
    from trajfm.features.shards import sample_split

    try:
        return sample_split(shards_dir, "test", context_len + horizon, max_windows)
    except ValueError:
        raise ValueError(
            f"no test window of {shards_dir} has context_len + horizon = {context_len + horizon} real points"
        ) from None


def evaluate_pretrained(
    pretrain_dir: str | Path, shards_dir: str | Path, context_len: int = 20, horizon: int = 10, max_windows: int = 4000
) -> dict:
    """Forecast metrics (metres) of the stage's model on the shards' test sample."""
    from trajfm.evaluate.forecast import evaluate_forecast
    from trajfm.model.checkpoint import load_model

    model = load_model(Path(pretrain_dir) / "model.pt")
    metrics = evaluate_forecast(
        model, evaluation_sample(shards_dir, context_len, horizon, max_windows), context_len, horizon
    )
    return {**metrics, "split": "test", "context_len": context_len, "horizon": horizon}


def register_pretrained(
    pretrain_dir: str | Path,
    shards_dir: str | Path,
    metrics: dict,
    corpus_sha256: str,
    root=None,
    name: str = BASE_NAME,
    corpus_name: str = "",
) -> dict:
    """Log and register the pre-trained model; returns the registration (version, champion, ...)."""
    from trajfm.registry.register import code_version
    from trajfm.registry.tracking import log_and_register

    stage, shards = read_manifest(pretrain_dir), read_manifest(shards_dir)
    history = json.loads((Path(pretrain_dir) / "history.json").read_text())
    params = {
        "preset": stage["preset"],
        "model": stage["model_config"],
        "train": stage["train_config"],
        "shards": shards.get("params", {}),
        "mixing": stage.get("probabilities") or {},
        "eval": {"context_len": metrics["context_len"], "horizon": metrics["horizon"], "split": "test"},
    }
    eval_id = stable_hash(
        {"shards": shards["key"], "split": "test", "context_len": metrics["context_len"], "horizon": metrics["horizon"]}
    )
    lineage_key = stable_hash(
        {"pretrain": stage["key"], "shards": shards["key"], "eval": eval_id, "corpus": corpus_sha256}
    )
    tags = {
        "trajfm.corpus_sha256": corpus_sha256,
        "trajfm.corpus": corpus_name,
        "trajfm.shards_key": shards["key"],
        "trajfm.shards_sha256": shards.get("sha256", ""),
        "trajfm.train_key": stage["key"],
        "trajfm.preset": stage["preset"],
        "trajfm.data_hash": corpus_sha256,
        "trajfm.code_version": code_version(),
        "trajfm.device": stage.get("device", "?"),
        "trajfm.config": json.dumps(params, sort_keys=True, default=str),
    }
    numbers = {f"test_{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    final = {
        f"final_{k}": v
        for k, v in stage.get("final", {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    r = log_and_register(
        root,
        run_name=f"{stage['preset']}-{stage['key'][:8]}",
        params=params,
        metrics={**numbers, **final},
        history=history,
        checkpoint_path=Path(pretrain_dir) / "model.pt",
        tags=tags,
        name=name,
        promote_metric="test_ade_m",
        lower_is_better=True,
        eval_id=eval_id,
        lineage_key=lineage_key,
    )
    return {
        "name": name,
        "version": r.version,
        "champion_version": r.champion_version,
        "promoted": r.promoted,
        "decision": r.decision,
        "reason": r.reason,
        "reused": r.reused,
        "model_uri": r.model_uri,
        "test_ade_m": r.metric_value,
        "corpus_sha256": corpus_sha256,
    }


def resolve_init_checkpoint(init: str, root=None) -> str:
    """The local ``.pt`` file to fine-tune from: ``models:/<name>@<alias>`` (e.g.
    ``models:/trajfm-base@champion``) or ``models:/<name>/<version>`` from the registry under
    ``root`` (downloaded once under the data root), else a checkpoint path as it is."""
    if not str(init).startswith("models:/"):
        if not Path(init).is_file():
            raise FileNotFoundError(f"init checkpoint {init} not found (give a .pt path or models:/<name>@<alias>)")
        return str(init)
    from mlflow import MlflowClient

    from trajfm.mlflow_store import download_checkpoint, tracking_uri

    ref = str(init)[len("models:/") :]
    uri = tracking_uri(root)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        try:
            version = int(client.get_model_version_by_alias(name, alias).version)
        except Exception as exc:
            raise ValueError(
                f"{init}: no version of {name!r} has alias {alias!r} in the registry at {uri} "
                f"(run `trajfm run pretrain` first)"
            ) from exc
    else:
        name, _, v = ref.partition("/")
        if not v.isdigit():
            raise ValueError(f"{init}: expected models:/<name>@<alias> or models:/<name>/<version>")
        version = int(v)
    return str(download_checkpoint(root, name, version))
