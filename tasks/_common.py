"""What every trajfm task shares: the cache policy, retry defaults, artifact helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from trajfm.store import data_root, root_identity, stable_hash


@dataclass
class DataRootAndFiles(CachePolicy):
    """Extends an inputs-based key with the identity and path of the data root (a wiped, moved or
    copied root misses the cache) and the fingerprints of the files behind ``sources`` (an added or edited file inside a
    source directory misses the cache)."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        # The root's id and its path: a copied root has the same id, and a cached result would
        # hand it paths into the original.
        parts: dict[str, Any] = {"root": root_identity(inputs.get("data_root")), "root_path": str(data_root(inputs.get("data_root")))}
        sources = inputs.get("sources")
        if sources:
            from trajfm.data.ingest import planned_key

            try:  # expands directories and globs, fingerprints every file (size, mtime / ETag)
                parts["files"] = planned_key(sources, inputs.get("params"))
            except Exception as exc:  # unreadable source: key on the error, the task reports it
                parts["files"] = f"{type(exc).__name__}: {exc}"
        return stable_hash(parts)


# Inputs + the task's code + the data root and source files: a re-run with the same inputs
# returns the cached result; change the code, the data or the root and the task runs again.
STAGE_CACHE = INPUTS + TASK_SOURCE + DataRootAndFiles()

RETRIES = 2
RETRY_DELAY_S = [2, 10]
