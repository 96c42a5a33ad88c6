"""Where stage outputs live and how they are written: data root, manifests, atomic writes.

Every stage writes a directory ``<root>/<stage>/<key>/`` holding its tables (Parquet), a
``manifest.json`` (row counts, content hashes, parameters, schema version) and, when it rejects
rows, ``quarantine.parquet`` with a ``reason`` column. ``key`` is a hash of the stage's inputs and
parameters, so identical inputs map to the same directory (a free cache) and two runs with
different inputs never write to the same place. Directories appear atomically: a stage writes
into a temporary sibling and renames it into place, so readers never see a partial output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = 1
ENV_ROOT = "TRAJFM_HOME"
DEFAULT_ROOT = ".trajfm"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: the argument, else ``$TRAJFM_HOME``, else ``./.trajfm``."""
    chosen = root if root not in (None, "") else os.environ.get(ENV_ROOT, DEFAULT_ROOT)
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object, independent of dict key order."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash of a DataFrame's values and column names (row order matters)."""
    h = hashlib.sha256()
    h.update(",".join(map(str, df.columns)).encode())
    h.update(pd.util.hash_pandas_object(df, index=False).values.tobytes())
    return h.hexdigest()[:16]


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Identity of an input file for cache keys: path, size and modification time."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_dir(root: Path, stage: str, key: str) -> Path:
    return root / stage / key


def read_manifest(path: str | os.PathLike) -> dict:
    """Read ``manifest.json`` from a stage directory (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    return json.loads(p.read_text())


def is_complete(directory: str | os.PathLike) -> bool:
    """Whether a stage directory is whole: its ``manifest.json`` reads, and every entry the manifest
    lists is still there (``contents``: what the stage wrote; ``files``: its tables,
    ``<name>.parquet``). A directory someone deleted files from is not complete, so the stage
    (and a cache keyed on it) builds it again instead of handing out a path that fails later."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict):
        return False
    names = list(manifest.get("contents") or [])
    names += [f"{name}.parquet" for name in (manifest.get("files") or {})]
    return all(os.path.exists(directory / name) for name in names)


class StageWriter:
    """Write a stage's files into a temporary directory, then move it into place at once.

    >>> with StageWriter(root, "ingest", key) as w:      # doctest: +SKIP
    ...     w.write_frame("points", df)
    ...     w.manifest.update(rows_in=10)
    """

    def __init__(self, root: Path, stage: str, key: str):
        self.final = stage_dir(root, stage, key)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.final.parent))
        self.manifest: dict[str, Any] = {
            "stage": stage,
            "key": key,
            "schema_version": SCHEMA_VERSION,
            "files": {},
        }

    @property
    def path(self) -> Path:
        return self.tmp

    def write_frame(self, name: str, df: pd.DataFrame) -> None:
        df.to_parquet(self.tmp / f"{name}.parquet", index=False)
        self.manifest["files"][name] = {"rows": int(len(df)), "hash": frame_hash(df)}

    def write_json(self, name: str, obj: Any) -> None:
        (self.tmp / f"{name}.json").write_text(json.dumps(obj, indent=2, default=str))

    def __enter__(self) -> "StageWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        # What the stage wrote (top level), so `is_complete` can tell a directory that lost a file.
        self.manifest["contents"] = sorted(p.name for p in self.tmp.iterdir() if p.name != "manifest.json")
        (self.tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=2, default=str))
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            # Another run produced the same key first: identical inputs, identical content.
            if is_complete(self.final):
                shutil.rmtree(self.tmp, ignore_errors=True)
            else:
                shutil.rmtree(self.final, ignore_errors=True)
                os.rename(self.tmp, self.final)


def root_identity(root: str | os.PathLike | None = None) -> str:
    """A random id written once per data root: a wiped root gets a new id, so caches keyed on it
    (Prefect task caches) never hand back paths that no longer exist."""
    r = data_root(root)
    marker = r / ".root_id"
    if not marker.exists():
        import uuid

        tmp = r / f".root_id.{uuid.uuid4().hex}"
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, marker)  # atomic: the first writer wins, later ones read its id
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return marker.read_text().strip()
