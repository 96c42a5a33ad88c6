"""Trajectory similarity: embeddings, and the odd/even self-similarity protocol (mean rank, hit@k).

``trajectory_embedding(model, ws)``: the mean of the backbone's final hidden states (after
GPT-2's last LayerNorm ``ln_f``) over each window's real tokens, a (N, d_model) float64 array.
The model reads displacements, not absolute positions (unless it has a space encoding), so two
tracks with the same shape in different places get similar embeddings: that is the point of a
region-agnostic model, and the protocol below shows what it costs for retrieval.

Odd/even protocol (TrajCL, t2vec): each scored window (at least ``min_points`` real points; up
to ``max_windows`` drawn with ``numpy.random.default_rng(seed)``) is split into its odd points
(the query) and its even points (the database entry), each re-encoded as a track of its own.
Every query is compared with the whole database (its own even half and those of every other
window) by Euclidean distance; its rank is 1 + the number of OTHER entries at a distance <=
the true one (ties count against the query, so a constant embedding ranks last, not first).
Metrics: ``mean_rank`` (1 is perfect, (N+1)/2 is chance), ``hit@k`` for k in 1, 5, 10.

Baseline ``resampled_path``: ``baselines.resampled_path_embedding``, ``path_points`` positions
evenly spaced along each half, as metres from the mean position of all windows (absolute place
and shape: a strong reference on real tracks).
"""

from __future__ import annotations

import numpy as np
import torch

from trajfm.evaluate.baselines import resampled_path_embedding
from trajfm.features.encode import encode_points
from trajfm.features.windows import WindowSet, stack_windows
from trajfm.model.gpt import TrajGPT
from trajfm.model.inputs import ModelInputs
from trajfm.model.patching import pad_to_patches


@torch.no_grad()
def trajectory_embedding(model: TrajGPT, ws: WindowSet, batch_size: int = 256) -> np.ndarray:
    """(N, d_model) float64 mean of the final hidden states over each window's real tokens."""
    P, device = model.config.patching.patch_in, next(model.parameters()).device
    width = int(ws.mask.sum(axis=1).max()) if len(ws) else 0
    if width > model.config.block_size:
        raise ValueError(f"tracks of {width} points are longer than block_size {model.config.block_size}")
    ws = WindowSet(
        ws.x[:, :width], ws.mask[:, :width], ws.lon[:, :width], ws.lat[:, :width], ws.t_ns[:, :width], ws.traj_id
    )
    hidden: list[torch.Tensor] = []
    hook = model.transformer.ln_f.register_forward_hook(lambda mod, inp, out: hidden.append(out))
    out = np.zeros((len(ws), model.config.d_model))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(ws), batch_size):
            b = slice(i, min(i + batch_size, len(ws)))
            mask = torch.from_numpy(ws.mask[b]).to(device)
            ll = torch.from_numpy(np.stack([ws.lon[b], ws.lat[b]], -1)).to(device) if model.needs_lonlat else None
            hidden.clear()
            model(ModelInputs(torch.from_numpy(ws.x[b]).to(device), mask, ll))
            h = hidden[-1].double()  # (B, Lt, D)
            real = pad_to_patches(mask, P).unflatten(1, (-1, P)).any(-1)  # (B, Lt) tokens holding a real point
            w = real[..., None].double()
            out[b] = ((h * w).sum(1) / w.sum(1).clamp(min=1.0)).cpu().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return out


def halves(ws: WindowSet) -> tuple[WindowSet, WindowSet]:
    """(odd points, even points) of every window, each re-encoded as a track of its own."""
    odd, even = [], []
    for i in range(len(ws)):
        k = int(ws.mask[i].sum())
        for items, idx in ((odd, np.arange(1, k, 2)), (even, np.arange(0, k, 2))):
            lon, lat, t = ws.lon[i, idx], ws.lat[i, idx], ws.t_ns[i, idx]
            items.append((encode_points(lon, lat, t), lon, lat, t, ws.traj_id[i]))
    width = (ws.mask.shape[1] + 1) // 2
    return stack_windows(odd, width), stack_windows(even, width)


def self_ranks(query: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(N,) 1-based rank of database row i for query row i (Euclidean; ties count against)."""
    q2, d2 = (query**2).sum(1), (database**2).sum(1)
    dist = np.sqrt(np.maximum(q2[:, None] + d2[None, :] - 2 * query @ database.T, 0.0))  # (N, N)
    true = np.diag(dist)
    rivals = dist <= true[:, None] * (1 + 1e-12) + 1e-12  # float tolerance: a tie is a tie
    np.fill_diagonal(rivals, False)
    return 1 + rivals.sum(axis=1)


def similarity_task(
    model: TrajGPT | None,
    ws: WindowSet,
    *,
    seed: int = 0,
    min_points: int = 8,
    max_windows: int = 2000,
    path_points: int = 8,
    batch_size: int = 256,
) -> dict[str, float]:
    """Odd/even self-similarity: mean rank and hit@1/5/10 of the model embedding and ``resampled_path``."""
    if min_points < 4:
        raise ValueError(f"min_points must be >= 4 (two points per half), got {min_points}")
    sel = np.flatnonzero(ws.mask.sum(axis=1) >= min_points)
    if len(sel) < 2:
        raise ValueError(f"similarity needs at least 2 windows with {min_points} real points, got {len(sel)}")
    if len(sel) > max_windows:
        sel = np.sort(np.random.default_rng(seed).choice(sel, size=max_windows, replace=False))
    odd, even = halves(ws.subset(sel))
    origin = (float(ws.lon[sel][ws.mask[sel]].mean()), float(ws.lat[sel][ws.mask[sel]].mean()))
    emb = {
        "resampled_path": tuple(
            resampled_path_embedding(h.lon, h.lat, h.mask, path_points, origin) for h in (odd, even)
        )
    }
    if model is not None:
        emb = {
            "model": (trajectory_embedding(model, odd, batch_size), trajectory_embedding(model, even, batch_size)),
            **emb,
        }
    out = {"similarity.n_windows": float(len(sel))}
    for name, (q, d) in emb.items():
        ranks = self_ranks(q, d)
        out[f"similarity.mean_rank.{name}"] = float(ranks.mean())
        for k in (1, 5, 10):
            out[f"similarity.hit@{k}.{name}"] = float((ranks <= k).mean())
    return out
