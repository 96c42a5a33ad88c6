"""Next-cell classification over H3: the optional cell-classification head of TrajGPT.

A step's class is where the NEXT point's H3 cell lies relative to the CURRENT point's cell: its
offset (di, dj) in H3's local IJ coordinates anchored at the current cell
(``h3.cell_to_local_ij``), one class per cell of the hexagonal disk of ``radius`` rings around
it (3R(R+1) + 1 cells, the current one included: the mover stays), plus one class FARTHER for a
step that leaves the disk (or crosses a pentagon's distortion, where local IJ is undefined).
The classes are the same few dozen everywhere on Earth, so the head is region-agnostic (TrajFM's
idea, like the displacement inputs), unlike a vocabulary of absolute cells; the direction one
class stands for is fixed within the IJ frame of an icosahedron face (a city, a harbour).

``GPTConfig(output=HeadConfig(head="cell", cell_resolution=r, cell_radius=R))`` gives TrajGPT a head of
``n_cell_classes(R)`` logits per point (``heads.output_width``). ``cell_loss`` is the cross
entropy on real (point, next point) pairs (padding carries no loss); ``predict_cells`` ranks the
candidate cells after each sequence's last point (a distribution for next-location Acc@k / MRR);
``decode_classes`` maps classes back to cells, ``cell_centres`` to their centres in degrees.
Positions are (lon, lat) degrees everywhere here; h3 itself takes (lat, lng): the swap happens
in ``cell_ids`` and ``cell_centres`` only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from trajfm.model.inputs import ModelInputs

IGNORE = -100  # class of a pair that carries no loss (padding, or the last real point)


def n_cell_classes(radius: int) -> int:
    """Cells within ``radius`` rings (3R(R+1) + 1) plus the FARTHER class."""
    return 3 * radius * (radius + 1) + 2


def disk_offsets(radius: int) -> np.ndarray:
    """(3R(R+1) + 1, 2) local IJ offsets (di, dj) of the cells within ``radius`` rings, sorted;
    in H3's IJ axes (120 degrees apart) a cell's ring number is max(|di|, |dj|, |di - dj|)."""
    r = np.arange(-radius, radius + 1)
    di, dj = np.meshgrid(r, r, indexing="ij")
    keep = np.maximum(np.maximum(abs(di), abs(dj)), abs(di - dj)) <= radius
    return np.stack([di[keep], dj[keep]], axis=1)


def far_class(radius: int) -> int:
    """Index of the FARTHER class (the last one)."""
    return n_cell_classes(radius) - 1


def cell_ids(lon: np.ndarray, lat: np.ndarray, resolution: int) -> np.ndarray:
    """H3 cells (strings, an object array of the same shape) of (lon, lat) degrees."""
    import h3

    lon, lat = np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)
    flat = [h3.latlng_to_cell(float(b), float(a), resolution) for a, b in zip(lon.ravel(), lat.ravel())]
    return np.array(flat, dtype=object).reshape(lon.shape)


def _class_of(origin: str, cell: str, radius: int, index: dict) -> int:
    import h3

    try:
        i0, j0 = h3.cell_to_local_ij(origin, origin)
        i, j = h3.cell_to_local_ij(origin, cell)
    except h3.H3BaseException:  # too far, or across a pentagon: no local IJ
        return far_class(radius)
    return index.get((i - i0, j - j0), far_class(radius))


def step_classes(lonlat: np.ndarray, mask: np.ndarray, resolution: int, radius: int) -> np.ndarray:
    """(B, L) int64: at point i, the class of point i+1's cell relative to point i's; ``IGNORE``
    where point i or i+1 is padding (and at the last column). ``lonlat`` (B, L, 2) degrees."""
    lonlat, mask = np.asarray(lonlat, dtype=np.float64), np.asarray(mask, dtype=bool)
    B, L = mask.shape
    out = np.full((B, L), IGNORE, dtype=np.int64)
    pairs = mask[:, :-1] & mask[:, 1:]
    rows, cols = np.nonzero(pairs)
    if len(rows) == 0:
        return out
    cells = cell_ids(lonlat[..., 0], lonlat[..., 1], resolution)
    index = {(int(a), int(b)): k for k, (a, b) in enumerate(disk_offsets(radius))}
    memo: dict[tuple[str, str], int] = {}
    for r, c in zip(rows, cols):
        key = (cells[r, c], cells[r, c + 1])
        if key not in memo:
            memo[key] = _class_of(*key, radius, index)
        out[r, c] = memo[key]
    return out


def decode_classes(origins, classes, radius: int) -> list:
    """The cell each class stands for around each origin cell (None for FARTHER or off the grid)."""
    import h3

    offsets = disk_offsets(radius)
    out = []
    for origin, k in zip(origins, np.asarray(classes).ravel()):
        if not 0 <= int(k) < len(offsets):
            out.append(None)
            continue
        i0, j0 = h3.cell_to_local_ij(origin, origin)
        try:
            out.append(h3.local_ij_to_cell(origin, i0 + int(offsets[k, 0]), j0 + int(offsets[k, 1])))
        except h3.H3BaseException:
            out.append(None)
    return out


def cell_centres(cells) -> tuple[np.ndarray, np.ndarray]:
    """(lon, lat) degrees of each cell's centre; NaN for None."""
    import h3

    ll = [h3.cell_to_latlng(c) if c is not None else (np.nan, np.nan) for c in cells]
    lat, lon = (np.array(v, dtype=np.float64) for v in zip(*ll)) if ll else (np.zeros(0), np.zeros(0))
    return lon, lat


def _check(model) -> None:
    if model.config.output.head != "cell":
        raise ValueError(
            f"this model has a {model.config.output.head!r} head, not 'cell': "
            "build it with output=HeadConfig(head='cell')"
        )


def cell_loss(
    model, x_raw: torch.Tensor, mask: torch.Tensor, lonlat: torch.Tensor, classes=None, kind=None
) -> torch.Tensor:
    """Mean cross entropy (nats) of the next point's cell class over real (point, next point)
    pairs; 0 when there is none. ``classes`` (B, L) from ``step_classes`` (computed from
    ``lonlat`` (B, L, 2) degrees when not given: pass them to train many epochs cheaply)."""
    _check(model)
    mask = mask.to(torch.bool)
    c = model.config
    if classes is None:
        classes = step_classes(
            lonlat.detach().cpu().numpy(), mask.cpu().numpy(), c.output.cell_resolution, c.output.cell_radius
        )
    classes = torch.as_tensor(classes, dtype=torch.long, device=x_raw.device)
    logits = model(ModelInputs(x_raw, mask, lonlat if model.needs_lonlat else None, kind))  # (B, L, C)
    valid = classes != IGNORE
    ce = F.cross_entropy(logits.flatten(0, 1), classes.clamp_min(0).flatten(), reduction="none").view_as(classes)
    return torch.where(valid, ce, torch.zeros((), dtype=ce.dtype, device=ce.device)).sum() / valid.sum().clamp_min(1)


@torch.no_grad()
def predict_cells(model, x_raw: torch.Tensor, mask: torch.Tensor, lonlat: torch.Tensor, k: int = 5, kind=None):
    """After each sequence's last real point (masks are prefixes): the ``k`` most likely next
    cells (lists of H3 strings, best first; FARTHER and off-grid classes left out) and their
    probabilities (B, k) under the softmax over all classes; the first is the point forecast
    (``cell_centres`` gives its centre)."""
    _check(model)
    mask = mask.to(torch.bool)
    c = model.config
    logits = model(ModelInputs(x_raw, mask, lonlat if model.needs_lonlat else None, kind))  # (B, L, C)
    rows = torch.arange(len(mask), device=mask.device)
    last = (mask.sum(1) - 1).clamp_min(0)
    probs = logits[rows, last].float().softmax(-1).cpu().numpy()  # (B, C)
    origin = cell_ids(
        lonlat[rows, last, 0].cpu().numpy(), lonlat[rows, last, 1].cpu().numpy(), c.output.cell_resolution
    )
    cells_out, probs_out = [], np.zeros((len(probs), k))
    for b, p in enumerate(probs):
        order = np.argsort(-p[:-1], kind="stable")  # FARTHER is not a place
        found = [
            (cell, p[o])
            for o, cell in zip(order, decode_classes([origin[b]] * len(order), order, c.output.cell_radius))
            if cell is not None
        ][:k]
        cells_out.append([cell for cell, _ in found])
        probs_out[b, : len(found)] = [q for _, q in found]
    return cells_out, probs_out
