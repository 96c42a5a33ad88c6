"""What every trajfm task shares: the cache policy, retry defaults, artifact helpers."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.logging import get_logger

from trajfm.store import data_root, is_complete, root_identity, stable_hash

log = get_logger("trajfm.cache")


@dataclass
class DataRootAndFiles(CachePolicy):
    """Extends an inputs-based key with the identity and path of the data root (a wiped, moved or
    copied root misses the cache) and the fingerprints of the files behind ``sources`` (an added or edited file inside a
    source directory misses the cache)."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        # The root's id and its path: a copied root has the same id, and a cached result would
        # hand it paths into the original.
        parts: dict[str, Any] = {
            "root": root_identity(inputs.get("data_root")),
            "root_path": str(data_root(inputs.get("data_root"))),
        }
        sources = inputs.get("sources")
        if sources:
            from trajfm.data.ingest import planned_key

            try:  # expands directories and globs, fingerprints every file (size, mtime / ETag)
                parts["files"] = planned_key(sources, inputs.get("params"))
            except Exception as exc:  # unreadable source: key on the error, the task reports it
                parts["files"] = f"{type(exc).__name__}: {exc}"
        return stable_hash(parts)


# --- cached results: JSON only, and only while the stage directories they name are whole -------

# Results are stored with Prefect's JSON serializer: the tasks return paths and plain dicts.
RESULT_SERIALIZER = "json"
_JSON_DECODERS = (None, "prefect.serializers.prefect_json_object_decoder")
# Keys by which Prefect's JSON decoder builds objects of a named class: never in our results.
_OBJECT_KEYS = ("__class__", "__exc_type__")
# Stage folders under a data root (``<root>/<stage>/<key>``) a cached result may name.
STAGE_FOLDERS = ("ingest", "preprocess", "features", "train", "evaluate", "select")


class UnusableCachedResult(Exception):
    """A stored result record that must not be used: not a plain JSON record, or it names a stage
    directory that is gone or incomplete."""


def check_result_record(content: bytes) -> Any:
    """The value of a Prefect result record, if the record is plain JSON written with the JSON
    serializer and holds only JSON values; raises :class:`UnusableCachedResult` otherwise.

    Read with ``json.loads`` alone: nothing here (or later, for a record that passes) unpickles
    or imports anything named in the file."""
    try:
        record = json.loads(content)
        metadata, raw = record["metadata"], record["result"]
        serializer = metadata["serializer"]
    except (ValueError, TypeError, KeyError) as exc:
        raise UnusableCachedResult(f"not a JSON result record ({type(exc).__name__})") from None
    if not isinstance(serializer, dict) or serializer.get("type") != "json":
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        raise UnusableCachedResult(f"written with serializer {kind!r}, only 'json' is read")
    if (
        serializer.get("jsonlib", "json") != "json"
        or serializer.get("object_decoder") not in _JSON_DECODERS
        or serializer.get("loads_kwargs")
    ):
        raise UnusableCachedResult("JSON serializer with a custom library, decoder or loads arguments")
    if not isinstance(raw, str):
        raise UnusableCachedResult("result is not JSON text")
    try:
        value = json.loads(raw)
    except ValueError:
        raise UnusableCachedResult("result is not valid JSON") from None
    _check_plain(value)
    return value


def _check_plain(value: Any) -> None:
    if isinstance(value, dict):
        if any(k in value for k in _OBJECT_KEYS):
            raise UnusableCachedResult("result names a Python class to build")
        for v in value.values():
            _check_plain(v)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v)


def stage_references(value: Any) -> list[Path]:
    """Stage directories (``<root>/<stage>/<key>``, absolute) named anywhere in a result value."""
    found: list[Path] = []
    if isinstance(value, str):
        p = Path(value)
        if p.is_absolute() and p.parent.name in STAGE_FOLDERS:
            found.append(p)
    elif isinstance(value, dict):
        for v in value.values():
            found += stage_references(v)
    elif isinstance(value, list):
        for v in value:
            found += stage_references(v)
    return found


def check_cached_value(value: Any) -> None:
    """Raise :class:`UnusableCachedResult` when a stage directory the value names is not whole."""
    for path in stage_references(value):
        if not is_complete(path):
            raise UnusableCachedResult(f"its stage directory {path} is missing or incomplete")


def _record_path(task_ctx, key: str) -> Path | None:
    """Where the result record for ``key`` lives, when results are stored on the local file system."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import get_default_result_storage

    store = getattr(task_ctx, "result_store", None)
    storage = getattr(store, "result_storage", None) or get_default_result_storage()
    if not isinstance(storage, LocalFileSystem):
        return None
    base = Path(storage.basepath).expanduser().resolve() if storage.basepath else Path.cwd()
    path = (base / Path(key).expanduser()).resolve()  # as Prefect stores it: under the base path only
    return path if base in path.parents else None


@dataclass
class UsableCachedResult(CachePolicy):
    """Wraps a cache policy: before Prefect looks up the key, the stored record (if any) is read as
    plain JSON and checked (:func:`check_result_record`, :func:`check_cached_value`); an unusable
    record is removed, so the task runs again and stores a fresh one under the same key. Without
    this a deleted stage directory poisons the cache (every rerun is "Cached" and then fails on a
    missing file), and a record planted under the data root would be unpickled on a cache hit."""

    base: CachePolicy = field(default_factory=lambda: INPUTS)

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str | None:
        key = self.base.compute_key(task_ctx=task_ctx, inputs=inputs, flow_parameters=flow_parameters, **kwargs)
        if key is None:
            return None
        path = _record_path(task_ctx, key)
        if path is None:  # remote result storage: trajfm does not configure one; see docs/faults.md
            return key
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            return key
        try:
            check_cached_value(check_result_record(content))
            return key
        except UnusableCachedResult as why:
            log.warning("cached result %s not used: %s; the task runs again", key, why)
        try:
            path.unlink()
            return key
        except OSError:  # cannot remove it: key the new result elsewhere (the bad record is never read)
            return stable_hash({"key": key, "replaces": hashlib.sha256(content).hexdigest()}, length=32)


# Inputs + the task's code + the data root and source files: a re-run with the same inputs
# returns the cached result; change the code, the data or the root and the task runs again; a
# stored result that is not plain JSON or names a stage directory that is gone is never used.
STAGE_CACHE = UsableCachedResult(base=INPUTS + TASK_SOURCE + DataRootAndFiles())

# --- retries: only for what can change between attempts ------------------------------------------

RETRIES = 2
RETRY_DELAY_S = [2, 10]
# Errors that a retry would only repeat: bad configuration, bad values, missing files.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def is_deterministic(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it was raised from is one a retry would only repeat."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DETERMINISTIC_ERRORS):
            return True
        exc, seen = exc.__cause__, seen + 1
    return False


def retry_unless_deterministic(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry infrastructure failures (a crashed child process, a
    lost connection, a full disk), never a configuration or input error that would fail again."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - every failure is classified here
        return not is_deterministic(exc)
    return True


# The options of every retried task: retried on infrastructure failures only, its result stored
# as JSON (never a pickle: docs/faults.md#security).
RETRIED: dict[str, Any] = {
    "retries": RETRIES,
    "retry_delay_seconds": RETRY_DELAY_S,
    "retry_condition_fn": retry_unless_deterministic,
    "result_serializer": RESULT_SERIALIZER,
}
# Tasks that talk to the MLflow registry wait longer between tries (its SQLite store may be busy).
REGISTRY_RETRIED: dict[str, Any] = {**RETRIED, "retry_delay_seconds": [5, 20]}
# A stage task: retried, and cached by its inputs in the data root (STAGE_CACHE: a cached result
# whose stage directory is gone or incomplete is recomputed).
STAGE_TASK: dict[str, Any] = {**RETRIED, "cache_policy": STAGE_CACHE, "persist_result": True}
