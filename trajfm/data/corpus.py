"""A pre-training corpus: a YAML file in the repository naming sources, their kind and mixing weight.

A corpus file (``corpora/*.yaml``, format in ``docs/corpus.md``)::

    name: base
    temperature: 2.0          # mixing: p_s ∝ weight_s * n_s ** (1 / temperature)
    coarsen: [1, 2, 4]        # sampling-interval multipliers each source is seen at (1 = native)
    sources:
      - name: hurdat2_storms                  # unique
        paths: ../../shared/data/corpus/hurdat2_storms.parquet   # or a list; dirs, globs, embedded:SUBSET
        format: canonical                     # a reader of trajfm.data.readers (READERS)
        kind: null                            # null: from the data (canonical Parquet has a kind column)
        weight: 1.0                           # mixing weight > 0
        reader_params: {}                     # reader options (generic: columns, timezone, ...)
        clean: {}                             # preprocess overrides (PreprocessParams fields, or per kind)

Relative paths are resolved against the YAML file's folder (``corpora/../../shared/data/...`` is
the project's ``../shared/data``, as in ``protocols/``). ``load_corpus`` validates everything it
can without reading the data: unknown keys (the known ones are listed), weights (numbers > 0),
kinds (``KIND_DEFAULTS`` of ``trajfm.data.clean``; for a source with ``kind: null`` read by the
canonical reader, the ``kind`` values in its files), formats, reader options, cleaning overrides,
duplicate names, missing files; each error is one ``CorpusError`` naming the file and the entry.

Mixing (``mixing_probabilities``): a source of ``n_s`` windows (or points) is drawn with
probability ``p_s ∝ weight_s * n_s ** (1 / temperature)``: temperature 1 samples in proportion
to size times weight, larger temperatures flatten towards ``weight_s`` alone, so the 5.4M-point
GeoLife does not drown the 144-point Kattegat ships.

Lineage (``Corpus.sha256``): a hash of the normalized corpus (everything but the file's own
location, paths as written) and, for every input file, its path relative to the source entry,
size and content SHA-256; a corpus whose data changes by one byte gets a new hash.
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from trajfm.data.catalog import EMBEDDED_PREFIX

if TYPE_CHECKING:
    import pandas as pd

CORPUS_KEYS = ("name", "description", "temperature", "coarsen", "sources")
SOURCE_KEYS = ("name", "paths", "format", "kind", "weight", "reader_params", "clean", "description")
REQUIRED_SOURCE_KEYS = ("name", "paths", "format", "weight")
REPO_CORPORA = Path(__file__).resolve().parents[2] / "corpora"
_GLOB_CHARS = set("*?[")


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class CorpusSource:
    """One source of a corpus: files read by one reader, one mixing weight.

    ``paths``: resolved files / directories / globs / ``embedded:SUBSET`` (absolute, except
    ``embedded:`` and URLs). ``kind``: mover kind for every point, ``None`` to take it from the
    data (canonical Parquet's ``kind`` column). ``weight``: mixing weight > 0.
    ``reader_params``: reader options (``trajfm.data.ingest`` params: ``columns``, ``timezone``,
    ``time_format``, ``delimiter``). ``clean``: preprocess overrides (``PreprocessParams`` fields,
    or a mapping kind -> fields), as ``trajfm.data.clean.normalize_params`` accepts.
    """

    name: str
    paths: tuple[str, ...]
    format: str
    kind: str | None
    weight: float
    reader_params: dict = field(default_factory=dict)
    clean: dict = field(default_factory=dict)
    description: str = ""
    raw_paths: tuple[str, ...] = ()  # the paths as written in the file (for the hash)

    def files(self) -> list[str]:
        """Every input file of the source, sorted (directories expanded to the reader's files)."""
        return _source_files(self)

    def ingest_sources(self) -> list[str]:
        """The sources ``trajfm.data.ingest.ingest`` takes (``embedded:`` expanded to files)."""
        out: list[str] = []
        for p in self.paths:
            if p.startswith(EMBEDDED_PREFIX):
                out.extend(str(f) for f in _embedded(p))
            else:
                out.append(p)
        return out

    def ingest_params(self) -> dict:
        """The ``ingest`` stage params: format, kind (when given), the source tag and reader options.

        The ``source`` tag is left to the reader (canonical Parquet keeps each row's)."""
        params: dict[str, Any] = {"format": self.format, **self.reader_params}
        if self.kind is not None:
            params["kind"] = self.kind
        return params

    def preprocess_params(self, native: bool = True) -> dict:
        """The cleaning table for this source: kind -> ``PreprocessParams``.

        ``native=True`` (pre-training): every kind resampled at the source's own native interval
        (``sampling.NATIVE_RESAMPLING``), then the source's ``clean`` overrides on top;
        ``native=False``: the kind defaults with the overrides (``clean.normalize_params``).
        """
        from dataclasses import replace

        from trajfm.data.clean import FIELD_NAMES, KIND_DEFAULTS, normalize_params
        from trajfm.data.sampling import NATIVE_RESAMPLING

        if not native:
            return normalize_params(self.clean or None)
        table = {k: replace(p, **NATIVE_RESAMPLING) for k, p in KIND_DEFAULTS.items()}
        clean = self.clean or {}
        if clean and set(clean) <= FIELD_NAMES:
            return {k: replace(p, **clean) for k, p in table.items()}
        star = clean.get("*")
        if star is not None:
            table = {k: replace(p, **star) for k, p in table.items()}
        for kind, fields in clean.items():
            if kind != "*":
                table[kind] = replace(table.get(kind, replace(KIND_DEFAULTS.get(kind), **NATIVE_RESAMPLING)), **fields)
        return table


@dataclass(frozen=True)
class Corpus:
    """A validated corpus file (see the module docstring)."""

    name: str
    sources: tuple[CorpusSource, ...]
    temperature: float
    coarsen: tuple[int, ...]
    path: str
    description: str = ""

    def source(self, name: str) -> CorpusSource:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"corpus {self.name!r} has no source {name!r}; it has {[s.name for s in self.sources]}")

    def normalized(self) -> dict:
        """The corpus content as plain data (paths as written, not resolved): what the hash covers."""
        return {
            "name": self.name,
            "temperature": self.temperature,
            "coarsen": list(self.coarsen),
            "sources": [
                {
                    "name": s.name,
                    "paths": list(s.raw_paths or s.paths),
                    "format": s.format,
                    "kind": s.kind,
                    "weight": s.weight,
                    "reader_params": s.reader_params,
                    "clean": s.clean,
                }
                for s in self.sources
            ],
        }

    def file_fingerprints(self) -> dict[str, list[dict]]:
        """Per source: ``{"file", "size", "sha256"}`` of each input file, ``file`` relative to the
        source's folder (the embedded ones by name), sorted."""
        out: dict[str, list[dict]] = {}
        for s in self.sources:
            prints = []
            for f in s.files():
                prints.append({"file": _display(f, s), "size": os.path.getsize(f), "sha256": file_sha256(f)})
            out[s.name] = sorted(prints, key=lambda d: d["file"])
        return out

    def sha256(self) -> str:
        """Lineage hash: the normalized corpus plus each input file's size and content hash."""
        payload = {"corpus": self.normalized(), "files": self.file_fingerprints()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Loading and validation


def corpus_path(path_or_name: str | os.PathLike) -> Path:
    """``"base"`` -> ``corpora/base.yaml`` of the repository; anything else is a path."""
    text = os.fspath(path_or_name)
    p = Path(os.path.expanduser(text))
    if p.suffix in (".yaml", ".yml") or os.sep in text or "/" in text or p.is_file():
        return p
    return REPO_CORPORA / f"{text}.yaml"


def load_corpus(path_or_name: str | os.PathLike, check_data: bool = True) -> Corpus:
    """Parse and validate a corpus file; ``"base"`` names ``corpora/base.yaml`` of the repository.

    ``check_data``: also check that every path exists and that the kinds in canonical Parquet
    files of ``kind: null`` sources are known (reads their ``kind`` column only). Every problem
    is a ``CorpusError`` naming the file and the entry; a missing corpus file is a
    ``FileNotFoundError``.
    """
    import yaml

    path = corpus_path(path_or_name)
    if not path.is_file():
        known = sorted(p.stem for p in REPO_CORPORA.glob("*.yaml")) if REPO_CORPORA.is_dir() else []
        raise FileNotFoundError(f"corpus file {path} does not exist (corpora in the repository: {known})")
    where = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CorpusError(f"corpus {where}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise CorpusError(f"corpus {where}: must be a mapping with 'name' and 'sources', got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(CORPUS_KEYS))
    if unknown:
        raise CorpusError(f"corpus {where}: unknown key(s) {unknown}; known: {list(CORPUS_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CorpusError(f"corpus {where}: 'name' must be a non-empty string, got {name!r}")
    temperature = _positive_number(raw.get("temperature", 1.0), f"corpus {where}: temperature")
    coarsen = _coarsen(raw.get("coarsen", [1]), where)
    entries = raw.get("sources")
    if not isinstance(entries, list) or not entries:
        raise CorpusError(f"corpus {where}: 'sources' must be a non-empty list of source entries, got {entries!r}")
    base = path.resolve().parent
    sources: list[CorpusSource] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        src = _source(entry, i, where, base, check_data)
        if src.name in seen:
            raise CorpusError(
                f"corpus {where}: sources[{i}] name {src.name!r} is a duplicate of sources[{seen[src.name]}]"
            )
        seen[src.name] = i
        sources.append(src)
    description = raw.get("description") or ""
    return Corpus(name.strip(), tuple(sources), temperature, coarsen, str(path.resolve()), str(description).strip())


def _positive_number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CorpusError(f"{what} must be a number > 0, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise CorpusError(f"{what} must be a finite number > 0, got {value!r}")
    return v


def _coarsen(value, where: str) -> tuple[int, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in items):
        raise CorpusError(
            f"corpus {where}: coarsen must be a list of whole multipliers >= 1 (1 = native), got {value!r}"
        )
    if len(set(items)) != len(items):
        raise CorpusError(f"corpus {where}: coarsen has repeated multipliers: {value!r}")
    return tuple(sorted(items))


def _source(entry, i: int, where: str, base: Path, check_data: bool) -> CorpusSource:
    from trajfm.data.clean import KIND_DEFAULTS
    from trajfm.data.readers import READERS

    label = f"sources[{i}]"
    if not isinstance(entry, dict):
        raise CorpusError(
            f"corpus {where}: {label} must be a mapping (name, paths, format, weight, ...), got {entry!r}"
        )
    if isinstance(entry.get("name"), str) and entry["name"].strip():
        label = f"sources[{i}] ({entry['name'].strip()})"
    at = f"corpus {where}: {label}"
    unknown = sorted(set(entry) - set(SOURCE_KEYS))
    if unknown:
        raise CorpusError(f"{at}: unknown key(s) {unknown}; known: {list(SOURCE_KEYS)}")
    missing = [k for k in REQUIRED_SOURCE_KEYS if k not in entry]
    if missing:
        raise CorpusError(f"{at}: lacks key(s) {missing}; needed: {list(REQUIRED_SOURCE_KEYS)}")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        raise CorpusError(f"{at}: name must be a non-empty string, got {name!r}")
    name = name.strip()
    weight = _positive_number(entry["weight"], f"{at}: weight")
    fmt = entry["format"]
    if fmt not in READERS:
        raise CorpusError(f"{at}: unknown format {fmt!r}; known: {sorted(READERS)}")
    kind = entry.get("kind")
    if kind is not None and kind not in KIND_DEFAULTS:
        raise CorpusError(f"{at}: unknown kind {kind!r}; known: {sorted(KIND_DEFAULTS)}")
    if (
        kind is None
        and READERS[fmt].kind is None
        and fmt != "canonical"
        and "kind" not in ((entry.get("reader_params") or {}).get("columns") or {})
    ):
        raise CorpusError(f"{at}: format {fmt!r} has no default kind: give kind: (one of {sorted(KIND_DEFAULTS)})")
    reader_params = _reader_params(entry, fmt, kind, at)
    clean = _clean_params(entry, at)
    raw_paths = entry["paths"]
    if isinstance(raw_paths, str):
        raw_paths = [raw_paths]
    if not isinstance(raw_paths, list) or not raw_paths or not all(isinstance(p, str) and p for p in raw_paths):
        raise CorpusError(f"{at}: paths must be a path or a non-empty list of paths, got {entry['paths']!r}")
    paths = tuple(_resolve(p, base) for p in raw_paths)
    src = CorpusSource(
        name=name,
        paths=paths,
        format=fmt,
        kind=kind,
        weight=weight,
        reader_params=dict(reader_params),
        clean=dict(clean),
        description=str(entry.get("description") or "").strip(),
        raw_paths=tuple(raw_paths),
    )
    if check_data:
        try:
            files = src.files()
        except (FileNotFoundError, ValueError, ModuleNotFoundError) as exc:
            raise CorpusError(f"{at}: {exc}") from None
        if fmt == "canonical":
            _check_canonical(files, kind, at)
    return src


def _reader_params(entry: dict, fmt: str, kind: str | None, at: str) -> dict:
    """A source's ``reader_params``, checked against its reader's options (and column mapping)."""
    from trajfm.data.readers import READERS

    reader_params = entry.get("reader_params") or {}
    if not isinstance(reader_params, dict):
        raise CorpusError(f"{at}: reader_params must be a mapping, got {reader_params!r}")
    try:
        READERS[fmt].check_options(reader_params)
        if fmt == "generic":
            from trajfm.data.readers.generic import check_mapping

            check_mapping(reader_params.get("columns"), kind, reader_params.get("time_format") or "auto")
    except ValueError as exc:
        raise CorpusError(f"{at}: reader_params: {exc}") from None
    return reader_params


def _clean_params(entry: dict, at: str) -> dict:
    """A source's ``clean`` mapping, checked as ``clean.normalize_params`` would take it."""
    from trajfm.data.clean import FIELD_NAMES, KIND_DEFAULTS, normalize_params

    clean = entry.get("clean") or {}
    if not isinstance(clean, dict):
        raise CorpusError(f"{at}: clean must be a mapping of cleaning parameters, got {clean!r}")
    stray = sorted(k for k in clean if k not in FIELD_NAMES and k not in KIND_DEFAULTS and k != "*")
    if stray:
        raise CorpusError(
            f"{at}: clean: unknown parameter(s) {stray}; known: {sorted(FIELD_NAMES)} "
            f"(or a kind mapping to them: {sorted(KIND_DEFAULTS)})"
        )
    try:
        normalize_params(clean)
    except (ValueError, TypeError) as exc:
        raise CorpusError(f"{at}: clean: {exc}") from None
    return clean


def _check_canonical(files: list[str], kind: str | None, at: str) -> None:
    from trajfm.data.clean import KIND_DEFAULTS
    from trajfm.data.readers.canonical import missing_columns

    for f in files:
        missing = missing_columns(f)
        if missing:
            raise CorpusError(f"{at}: {f} is not canonical Parquet (lacks {missing}); use format: generic with columns")
        if kind is None:
            unknown = sorted(k for k in parquet_kinds(f) if k not in KIND_DEFAULTS)
            if unknown:
                raise CorpusError(
                    f"{at}: {f} has kind value(s) {unknown} with no cleaning defaults; known: {sorted(KIND_DEFAULTS)} "
                    f"(set kind: to override every row's)"
                )


def parquet_kinds(path: str | os.PathLike) -> list[str]:
    """Distinct ``kind`` values of a canonical Parquet file (reads that column only)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["kind"]).column("kind")
    return sorted(str(v) for v in pc.unique(column).to_pylist() if v is not None)


def _resolve(item: str, base: Path) -> str:
    text = os.path.expandvars(os.path.expanduser(item))
    if text.startswith(EMBEDDED_PREFIX) or "://" in text or os.path.isabs(text):
        return text
    return str((base / text).resolve())


def _embedded(path: str) -> list[Path]:
    from trajfm.data.catalog import embedded_files

    return embedded_files(path[len(EMBEDDED_PREFIX) :] or None)


def _source_files(src: CorpusSource) -> list[str]:
    from trajfm.data.readers import known_extensions

    extensions = known_extensions(src.format)
    files: set[str] = set()
    for p in src.paths:
        if p.startswith(EMBEDDED_PREFIX):
            files.update(str(f) for f in _embedded(p))
            continue
        if "://" in p:
            raise ValueError(f"{p}: remote sources are read by ingest, not hashed here; copy it locally")
        if any(c in p for c in _GLOB_CHARS):
            found = [f for f in glob.glob(p, recursive=True) if os.path.isfile(f)]
            if not found:
                raise FileNotFoundError(f"{p} matches no files")
            files.update(str(Path(f).resolve()) for f in found)
        elif os.path.isdir(p):
            found = [
                str(f)
                for f in Path(p).rglob("*")
                if f.is_file()
                and f.suffix.lower() in extensions
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            ]
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no {src.format} files ({', '.join(extensions)})")
            files.update(found)
        elif os.path.isfile(p):
            files.add(str(Path(p).resolve()))
        else:
            raise FileNotFoundError(f"{p} does not exist")
    return sorted(files)


def _display(f: str, src: CorpusSource) -> str:
    """A file's name for the hash: relative to the source's first folder (machine-independent)."""
    for p in src.paths:
        if p.startswith(EMBEDDED_PREFIX):
            continue
        root = p if os.path.isdir(p) else os.path.dirname(p.split("*")[0])
        try:
            rel = os.path.relpath(f, root)
        except ValueError:
            continue
        if not rel.startswith(".."):
            return rel
    return os.path.basename(f)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content (cached per path, size and modification time)."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        from trajfm.store import file_sha256 as content_sha256

        _HASH_CACHE[key] = content_sha256(path)
    return _HASH_CACHE[key]


# ---------------------------------------------------------------------------------------------
# Mixing


def mixing_probabilities(corpus: Corpus, counts: Mapping[str, int]) -> dict[str, float]:
    """Probability of drawing each source: ``p_s ∝ weight_s * n_s ** (1 / temperature)``.

    ``counts``: source name -> its size (windows or points; whatever the sampler draws). Every
    source of the corpus must be given, no other; a source with 0 gets probability 0. The
    result sums to 1. Raises ``CorpusError`` for missing/unknown names, negative counts or when
    every count is 0.
    """
    names = [s.name for s in corpus.sources]
    missing = [n for n in names if n not in counts]
    extra = sorted(set(counts) - set(names))
    if missing or extra:
        raise CorpusError(
            f"corpus {corpus.path}: counts must name every source exactly: missing {missing}, unknown {extra}"
        )
    bad = {n: counts[n] for n in names if isinstance(counts[n], bool) or not float(counts[n]) >= 0}
    if bad:
        raise CorpusError(f"corpus {corpus.path}: counts must be >= 0, got {bad}")
    raw = {s.name: s.weight * float(counts[s.name]) ** (1.0 / corpus.temperature) for s in corpus.sources}
    total = sum(raw.values())
    if not total > 0:
        raise CorpusError(f"corpus {corpus.path}: every source has count 0; nothing to sample")
    return {n: v / total for n, v in raw.items()}


# ---------------------------------------------------------------------------------------------
# What the cleaning defaults do to each source


def read_source(src: CorpusSource):
    """Read every file of a source into one ``ReadResult``-like pair ``(points, rows_read,
    reader_quarantined_by_reason)`` with the source's reader, kind and reader params."""
    import pandas as pd

    from trajfm.data.readers import READERS

    fmt = READERS[src.format]
    frames, rows_read, by_reason = [], 0, {}
    for f in src.files():
        r = fmt.read(f, kind=src.kind, **src.reader_params)
        frames.append(r.points)
        rows_read += r.rows_read
        for k, v in r.quarantined_by_reason().items():
            by_reason[k] = by_reason.get(k, 0) + v
    points = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    for col in ("kind", "source"):
        points[col] = points[col].astype("category")
    return points, rows_read, by_reason


def clean_report(corpus: Corpus, names: list[str] | None = None) -> "pd.DataFrame":
    """Per corpus source, kind and ``source`` tag: rows read, quarantined by the reader, kept by cleaning with the
    defaults (and the source's ``clean`` overrides), quarantined by each cleaning reason, pieces
    kept and the resampling interval used (``trajfm.data.sampling``). Reads and cleans every
    source in memory: minutes for the whole base corpus on one core."""
    import pandas as pd

    from trajfm.data.clean import CLEAN_REASONS, clean_partition, normalize_params
    from trajfm.data.sampling import source_native_interval_s

    rows = []
    for src in corpus.sources:
        if names is not None and src.name not in names:
            continue
        points, rows_read, reader_q = read_source(src)
        native = source_native_interval_s(points)
        table = normalize_params(src.clean or None)
        for (kind, tag), part in points.groupby(["kind", "source"], observed=True):
            out, _q, c = clean_partition(part, table, native_interval_s=native)
            steps = out.groupby("traj_id", observed=True)["t"].diff().dt.total_seconds()
            rows.append(
                {
                    "source": src.name,
                    "tag": str(tag),
                    "kind": str(kind),
                    "rows_in": c["rows_in"],
                    "rows_kept": c["rows_kept"],
                    **{r: c["quarantined_by_reason"].get(r, 0) for r in CLEAN_REASONS},
                    "pieces": c["n_trajectories"],
                    "native_s": native.get(str(tag), float("nan")),
                    "interval_s": float(steps.median()) if len(out) else float("nan"),
                    "rows_out": c["rows_out"],
                }
            )
        rows[-1]["reader_quarantined"] = sum(reader_q.values())
        rows[-1]["rows_read"] = rows_read
    return pd.DataFrame(rows)
