"""Streaming feature shards into training: bounded memory, deterministic shuffling, shards per
rank, per-source mixing, exact resume.

The loader is torchdata's ``StatefulDataLoader`` (a drop-in ``DataLoader`` whose
``state_dict()`` / ``load_state_dict()`` capture and restore the position of its dataset's
iterator); ``ShardStream`` is the ``IterableDataset`` it reads, and its iterator is ``Stateful``
(``state_dict`` / ``load_state_dict``), so the loader's state (a few integers per source) goes
into the training checkpoint and a resumed run continues with the very next window.

The stream of rank ``r`` of ``W`` (shards from ``trajfm.features.shards``):

- *Mixing*: window ``k`` of the stream comes from a source drawn with the given probabilities
  (e.g. temperature sampling over sources, ``trajfm.data.corpus.mixing_probabilities``), from a
  generator seeded by ``(seed, r, k // 1024)``: a function of the counter, so resuming needs
  only ``k``.
- *Shards per rank*: in pass ``p`` over a source, its shards are put in an order drawn from
  ``(seed, source, p)`` (the same on every rank) and rank ``r`` reads shards ``r, r + W, ...``
  of that order; a source with fewer shards than ranks is read by every rank, each keeping
  every W-th window, so no rank ever runs dry. A source's stream is endless: pass ``p + 1``
  starts when pass ``p`` ends (pre-training counts steps, not epochs).
- *Within a shard*: windows in a permutation drawn from ``(seed, source, p, shard)``. A shard
  is bounded (``max_windows``), and only the current shard of each source is in memory, so the
  loader holds at most ``n_sources`` shards whatever the corpus size.

Evaluation streams (``split="val"``) read each shard of the split once, in manifest order,
rank ``r`` taking shards ``r, r + W, ...``.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset

from trajfm.features.shards import load_manifest, load_shard

BLOCK = 1024  # source choices drawn per generator
# torchdata 0.11 calls a torch API that torch 2.13 deprecated, once per iterator: noise, not news
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def _seed(*parts) -> list[int]:
    """A numpy seed sequence from ints and strings (crc32 of a string: stable across runs)."""
    return [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]


class ShardStream(IterableDataset):
    """Windows of a shards directory as ``{"x": (L, F) float32, "mask": (L,) bool, "lonlat":
    (L, 2) float64}`` samples (``lonlat`` only with ``lonlat=True``), truncated to ``block_size``."""

    def __init__(
        self,
        shards_dir: str | Path,
        split: str = "train",
        rank: int = 0,
        world: int = 1,
        seed: int = 0,
        probabilities: dict[str, float] | None = None,
        block_size: int | None = None,
        lonlat: bool = False,
    ):
        self.shards_dir = Path(shards_dir)
        manifest = load_manifest(shards_dir)
        self.split, self.rank, self.world, self.seed = split, rank, world, seed
        self.block_size, self.lonlat = block_size, lonlat
        self.shards = [sh for sh in manifest["shards"] if sh["split"] == split]
        if not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank {rank} of {world}")
        by_source: dict[str, list[dict]] = {}
        for sh in self.shards:
            by_source.setdefault(sh["source"], []).append(sh)
        self.by_source = dict(sorted(by_source.items()))
        self.sources = list(self.by_source)
        if probabilities is None:  # proportional to windows
            probabilities = {s: sum(sh["windows"] for sh in v) for s, v in self.by_source.items()}
        unknown = sorted(set(probabilities) - set(manifest["sources"]))
        if unknown:
            raise ValueError(f"mixing probabilities for sources not in {shards_dir}: {unknown}")
        p = np.array([float(probabilities.get(s, 0.0)) for s in self.sources])
        if split == "train" and (not len(p) or p.sum() <= 0 or (p < 0).any()):
            raise ValueError(
                f"need non-negative mixing probabilities with a positive sum over {self.sources}, got {probabilities}"
            )
        self.p = p / p.sum() if len(p) and p.sum() > 0 else p

    @property
    def n_windows(self) -> int:
        return sum(sh["windows"] for sh in self.shards)

    def __iter__(self):
        if self.split == "train":
            return _MixedIterator(self)
        return _EvalIterator(self)

    def sample(self, ws, i: int) -> dict:
        L = self.block_size or ws.x.shape[1]
        out = {
            "x": torch.from_numpy(np.ascontiguousarray(ws.x[i, :L], dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(ws.mask[i, :L], dtype=bool)),
        }
        if self.lonlat:
            out["lonlat"] = torch.from_numpy(np.stack([ws.lon[i, :L], ws.lat[i, :L]], axis=-1).astype(np.float64))
        return out


class _SourceCursor:
    """Position in one source's endless stream: pass, shard (of this rank's list), window."""

    def __init__(self, stream: ShardStream, source: str, state: dict | None = None):
        self.stream, self.source = stream, source
        self.shards = stream.by_source[source]
        self.pass_, self.shard, self.pos = (state["pass"], state["shard"], state["pos"]) if state else (0, 0, 0)
        self._cache: tuple | None = None  # (pass, shard, windows, order)

    def state(self) -> dict:
        return {"pass": self.pass_, "shard": self.shard, "pos": self.pos}

    def _mine(self, p: int) -> tuple[list[int], bool]:
        """This rank's shard indices in pass ``p``, and whether windows are strided over ranks."""
        s = self.stream
        order = np.random.default_rng(_seed(s.seed, self.source, p)).permutation(len(self.shards))
        if len(self.shards) >= s.world:
            return [int(i) for i in order[s.rank :: s.world]], False
        return [int(i) for i in order], True

    def _load(self):
        key = (self.pass_, self.shard)
        if self._cache is None or self._cache[:2] != key:
            s = self.stream
            mine, strided = self._mine(self.pass_)
            index = mine[self.shard]
            ws = load_shard(s.shards_dir, self.shards[index])
            order = np.random.default_rng(_seed(s.seed, self.source, self.pass_, index)).permutation(len(ws))
            if strided:
                order = order[s.rank :: s.world]
            self._cache = (*key, ws, order, len(mine))
        return self._cache

    def next(self) -> dict:
        empty = 0
        while True:
            _, _, ws, order, n_mine = self._load()
            if self.pos < len(order):
                i = int(order[self.pos])
                self.pos += 1
                return self.stream.sample(ws, i)
            empty = empty + 1 if self.pos == 0 else 0
            if empty > n_mine:
                raise ValueError(
                    f"source {self.source!r} has no window for rank {self.stream.rank} of {self.stream.world}: "
                    f"give it mixing probability 0 or train on fewer ranks"
                )
            self.pos, self.shard = 0, self.shard + 1  # this shard is done (or had nothing for this rank)
            if self.shard >= n_mine:
                self.pass_, self.shard = self.pass_ + 1, 0


class _MixedIterator:
    """Endless training stream (Stateful: ``state_dict`` / ``load_state_dict``)."""

    def __init__(self, stream: ShardStream):
        self.stream = stream
        self.k = 0
        self.cursors = {s: _SourceCursor(stream, s) for s in stream.sources}
        self._block: tuple[int, np.ndarray] | None = None

    def __iter__(self):
        return self

    def _source(self, k: int) -> str:
        b = k // BLOCK
        if self._block is None or self._block[0] != b:
            s = self.stream
            rng = np.random.default_rng(_seed(s.seed, s.rank, b, "mix"))
            self._block = (b, rng.choice(len(s.sources), size=BLOCK, p=s.p))
        return self.stream.sources[int(self._block[1][k % BLOCK])]

    def __next__(self) -> dict:
        source = self._source(self.k)
        self.k += 1
        return self.cursors[source].next()

    def state_dict(self) -> dict:
        return {
            "k": self.k,
            "sources": {s: c.state() for s, c in self.cursors.items()},
            "rank": self.stream.rank,
            "world": self.stream.world,
            "seed": self.stream.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.stream
        if (state["rank"], state["world"], state["seed"]) != (s.rank, s.world, s.seed):
            raise ValueError(
                f"loader state of rank {state['rank']}/{state['world']} seed {state['seed']} "
                f"cannot resume rank {s.rank}/{s.world} seed {s.seed}"
            )
        if sorted(state["sources"]) != sorted(s.sources):
            raise ValueError(f"loader state for sources {sorted(state['sources'])}, stream has {s.sources}")
        self.k = int(state["k"])
        self.cursors = {name: _SourceCursor(s, name, st) for name, st in state["sources"].items()}


class _EvalIterator:
    """Each shard of the split once (this rank's share), windows in order."""

    def __init__(self, stream: ShardStream):
        self.stream = stream
        self.items = (
            (j, i)
            for j, sh in enumerate(stream.shards)
            if j % stream.world == stream.rank
            for i in range(sh["windows"])
        )
        self._ws: tuple[int, object] | None = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        j, i = next(self.items)
        if self._ws is None or self._ws[0] != j:
            self._ws = (j, load_shard(self.stream.shards_dir, self.stream.shards[j]))
        return self.stream.sample(self._ws[1], i)


def make_loader(stream: ShardStream, batch_size: int, num_workers: int = 0):
    """A ``StatefulDataLoader`` of ``batch_size`` windows per batch over ``stream``.

    ``num_workers=0`` reads in the training process (exact ``state_dict`` at any batch); more
    workers would need one stream per worker, which this stream does not split."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    if num_workers:
        raise ValueError("ShardStream is read by the training process itself: num_workers must be 0")
    # a private generator: a DataLoader iterator draws its base seed from it, never from the global
    # RNG that dropout uses (a resumed run restores that RNG, then makes a new iterator)
    generator = torch.Generator().manual_seed(stream.seed)
    return StatefulDataLoader(stream, batch_size=batch_size, num_workers=0, generator=generator)
