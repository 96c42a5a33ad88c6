"""Pre-train the foundation model: corpus -> (per source) ingest -> validate raw -> preprocess on
Dask at the source's native interval -> validate processed -> shards (native and coarser
views) -> streamed training (torchrun when ``nproc > 1``) -> register ``trajfm-base`` with the
corpus hash as lineage, ``champion`` by the project's rule."""

from __future__ import annotations

from dataclasses import replace

from flows._params import documented
from flows._redact import flow
from tasks.ingest import ingest_task
from tasks.preprocess import preprocess_task
from tasks.pretrain import calibrate_base_task, pretrain_task, register_base_task, shards_task
from tasks.validate import validate_task
from trajfm.params import DEFAULT_PRETRAIN_PRESET, PresetName


@flow(name="pretrain", flow_run_name="pretrain-{preset}", log_prints=True)
@documented
def pretrain(
    corpus: str = "base",
    data_root: str | None = None,
    preset: PresetName = DEFAULT_PRETRAIN_PRESET,
    model_overrides: dict | None = None,
    epochs: int = 1,
    max_steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    sources: list[str] | None = None,
    window: int = 128,
    max_windows: int = 4096,
    quality_params: dict | None = None,
    train_overrides: dict | None = None,
    dask_address: str | None = None,
    n_workers: int = 2,
    nproc: int = 1,
    torchrun_args: list[str] | None = None,
    model_name: str = "trajfm-base",
    context_len: int = 20,
    horizon: int = 10,
) -> dict:
    """Pre-train preset on a corpus file and register it.

    Args:
        corpus: a corpus name (corpora/<name>.yaml) or a YAML path.
        preset: model preset (base-small, base, base-large or any other).
        epochs: nominal epochs (train windows / batch_size steps each).
        max_steps: cap on optimizer steps (the schedule is laid out over it).
        lr: peak learning rate.
        sources: only these corpus sources (default: all).
        window: points per window (the preset's block_size at most is used).
        max_windows: windows per shard.
        context_len: points of context of the registration's forecast evaluation.
        horizon: forecast steps of that evaluation.
    """
    from trajfm.data.corpus import load_corpus
    from trajfm.train.pretrain import source_preprocess_params

    c = load_corpus(corpus)
    chosen = _chosen_sources(c, sources)
    processed = {
        src.name: _prepare_source(
            src, source_preprocess_params(src), data_root, quality_params, dask_address, n_workers
        )
        for src in chosen
    }
    shards_dir, probabilities = _shards_and_mixing(c, chosen, sources, processed, data_root, window, max_windows)
    corpus_sha = load_corpus(corpus).sha256()
    overrides = {
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "lr": lr,
        **(train_overrides or {}),
    }
    pretrain_dir = pretrain_task(
        shards_dir,
        data_root=data_root,
        preset=preset,
        model_overrides=model_overrides,
        train_overrides=overrides,
        probabilities={k: v for k, v in probabilities.items() if v > 0},
        lineage={"corpus": c.name, "corpus_sha256": corpus_sha},
        nproc=nproc,
        torchrun_args=torchrun_args,
    )
    model_dir, registration = _calibrate_and_register(
        pretrain_dir, shards_dir, corpus_sha, c.name, data_root, model_name, context_len, horizon
    )
    return {
        "corpus": c.name,
        "corpus_sha256": corpus_sha,
        "processed": processed,
        "shards_dir": shards_dir,
        "mixing": probabilities,
        "pretrain_dir": pretrain_dir,
        "model_dir": model_dir,
        "registration": registration,
    }


def _chosen_sources(c, sources: list[str] | None) -> list:
    """The corpus sources to pre-train on: all, or the named ones (an unknown name is an error)."""
    chosen = [s for s in c.sources if sources is None or s.name in sources]
    unknown = sorted(set(sources or []) - {s.name for s in c.sources})
    if unknown or not chosen:
        raise ValueError(
            f"corpus {c.name!r} has no source(s) {unknown or sources}; it has {[s.name for s in c.sources]}"
        )
    return chosen


def _prepare_source(src, preprocess_params: dict, data_root, quality_params, dask_address, n_workers) -> str:
    """One corpus source: ingest -> validate raw -> preprocess (Dask) -> validate processed."""
    ingest_dir = ingest_task(src.ingest_sources(), data_root=data_root, params=src.ingest_params())
    validate_task(ingest_dir, "raw", params=quality_params, data_root=data_root)
    processed_dir = preprocess_task(
        ingest_dir, data_root=data_root, params=preprocess_params, dask_address=dask_address, n_workers=n_workers
    )
    validate_task(processed_dir, "processed", params=quality_params, data_root=data_root)
    return processed_dir


def _calibrate_and_register(
    pretrain_dir, shards_dir, corpus_sha, corpus_name, data_root, model_name, context_len, horizon
) -> tuple[str, dict]:
    """trajfm-base carries its never-worse-than-constant-velocity rule, fitted on the validation
    shards; then it is registered with the corpus hash as lineage."""
    model_dir = calibrate_base_task(
        pretrain_dir, shards_dir, data_root=data_root, context_len=context_len, horizon=horizon
    )
    registration = register_base_task(
        model_dir,
        shards_dir,
        corpus_sha,
        corpus_name=corpus_name,
        data_root=data_root,
        name=model_name,
        context_len=context_len,
        horizon=horizon,
    )
    return model_dir, registration


def _shards_and_mixing(c, chosen, sources, processed: dict, data_root, window: int, max_windows: int):
    """The shards of every processed source (native and coarser views) and the mixing probabilities."""
    from trajfm.train.pretrain import corpus_mixing

    shards_dir = shards_task(
        [[k, v] for k, v in processed.items()],
        data_root=data_root,
        window_params={"window": window, "stride": window},
        max_windows=max_windows,
        coarsen=list(c.coarsen),
    )
    if sources is not None:  # a subset: mixing over the chosen sources only
        c = replace(c, sources=tuple(chosen))
    probabilities = corpus_mixing(c, shards_dir)
    return shards_dir, probabilities
