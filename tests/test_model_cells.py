"""The cell-classification head (trajfm/model/cells.py) on real AIS windows: classes that decode
back to the true cell, padding without loss, a loss that learns, ranked next cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import seeded_model, small_slice_windows
from synthetic_tracks import one_torch_thread  # noqa: F401 (autouse fixture)
from trajfm.geo import haversine_m
from trajfm.model import GPTConfig, TrajGPT, cells, load_model, save_checkpoint
from trajfm.model.config import list_presets, load_preset

h3 = pytest.importorskip("h3")
RES, RADIUS = 9, 4
SMALL = dict(
    n_layer=2, n_head=2, d_model=32, block_size=32, dropout=0.0, head="cell", cell_resolution=RES, cell_radius=RADIUS
)


@pytest.fixture(scope="module")
def ais():
    """Windows (32 points, 60 s) of the 9,091-point NY Harbor day, cleaned as the pipeline does."""
    return small_slice_windows(window=32, stride=16)["train"]


def lonlat_of(ws) -> np.ndarray:
    return np.stack([ws.lon, ws.lat], axis=-1)  # (N, L, 2) degrees, lon first


def make_model(ws, seed=0, **cfg):
    return seeded_model(ws, seed, **{**SMALL, **cfg})


def test_class_set_is_the_h3_disk_everywhere():
    assert len(cells.disk_offsets(RADIUS)) == cells.n_cell_classes(RADIUS) - 1 == 3 * RADIUS * (RADIUS + 1) + 1
    for lat, lon in [
        (40.60, -74.02),
        (39.90, 116.40),
        (53.40, -2.98),
        (-33.9, 151.2),
    ]:  # NY, Beijing, Liverpool, Sydney
        origin = h3.latlng_to_cell(lat, lon, RES)
        i0, j0 = h3.cell_to_local_ij(origin, origin)
        got = {tuple(np.subtract(h3.cell_to_local_ij(origin, c), (i0, j0))) for c in h3.grid_disk(origin, RADIUS)}
        assert got == {tuple(o) for o in cells.disk_offsets(RADIUS)}
        ring = {(int(a), int(b)) for a, b in cells.disk_offsets(RADIUS)} - {
            tuple(o) for o in cells.disk_offsets(RADIUS - 1)
        }
        assert {
            tuple(np.subtract(h3.cell_to_local_ij(origin, c), (i0, j0))) for c in h3.grid_ring(origin, RADIUS)
        } == ring


def test_true_class_decodes_to_the_true_cell_on_real_windows(ais):
    classes = cells.step_classes(lonlat_of(ais), ais.mask, RES, RADIUS)
    pairs = ais.mask[:, :-1] & ais.mask[:, 1:]
    assert (classes[:, :-1][pairs] >= 0).all() and (classes[:, :-1][~pairs] == cells.IGNORE).all()
    assert (classes[:, -1] == cells.IGNORE).all()
    rows, cols = np.nonzero(pairs)
    far = classes[rows, cols] == cells.far_class(RADIUS)
    assert far.mean() < 0.05  # a 60 s vessel step rarely leaves ~1.4 km of rings
    rows, cols = rows[~far], cols[~far]
    origin = cells.cell_ids(ais.lon[rows, cols], ais.lat[rows, cols], RES)
    decoded = cells.decode_classes(origin, classes[rows, cols], RADIUS)
    truth = cells.cell_ids(ais.lon[rows, cols + 1], ais.lat[rows, cols + 1], RES)
    assert list(decoded) == list(truth)
    lon, lat = cells.cell_centres(decoded)
    edge = np.array([h3.edge_length(e, unit="m") for e in (h3.origin_to_directed_edges(c)[0] for c in decoded)])
    dist = haversine_m(lon, lat, ais.lon[rows, cols + 1], ais.lat[rows, cols + 1])
    assert (dist <= edge * 1.02).all()  # a hexagon's centre is within one edge length of its every point
    assert cells.decode_classes([origin[0]], [cells.far_class(RADIUS)], RADIUS) == [None]


def test_padding_carries_no_loss(ais):
    model = make_model(ais).eval()
    ws = ais.subset(slice(0, 8))
    x, mask, ll = torch.tensor(ws.x), torch.tensor(ws.mask), torch.tensor(lonlat_of(ws))
    mask[:4, 20:] = False  # half the rows end early
    loss = cells.cell_loss(model, x, mask, ll)
    x2, ll2 = x.clone(), ll.clone()
    x2[~mask] = 1e6  # garbage where there is no point
    ll2[~mask] = torch.tensor([179.0, -89.0], dtype=ll2.dtype)
    assert torch.equal(cells.cell_loss(model, x2, mask, ll2), loss)
    only_one = torch.zeros_like(mask)
    only_one[:, 0] = True  # no (point, next point) pair at all
    assert cells.cell_loss(model, x, only_one, ll).item() == 0.0


def test_loss_decreases_in_a_few_steps_on_real_windows(ais):
    model = make_model(ais, seed=1).train()
    ws = ais.subset(slice(0, 48))
    x, mask, ll = torch.tensor(ws.x), torch.tensor(ws.mask), torch.tensor(lonlat_of(ws))
    classes = cells.step_classes(lonlat_of(ws), ws.mask, RES, RADIUS)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = cells.cell_loss(model, x, mask, ll, classes=classes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(cells.n_cell_classes(RADIUS)), rel=0.1)  # about uniform at init
    assert losses[-1] < 0.7 * losses[0]


def test_predict_cells_ranks_neighbours_and_survives_a_checkpoint(ais, tmp_path):
    model = make_model(ais, seed=2).eval()
    ws = ais.subset(slice(0, 6))
    x, mask, ll = torch.tensor(ws.x), torch.tensor(ws.mask), torch.tensor(lonlat_of(ws))
    mask[0, 10:] = False
    top, probs = cells.predict_cells(model, x, mask, ll, k=5)
    last = mask.sum(1) - 1
    for b in range(len(ws)):
        origin = h3.latlng_to_cell(float(ll[b, last[b], 1]), float(ll[b, last[b], 0]), RES)
        assert len(set(top[b])) == 5 and all(h3.grid_distance(origin, c) <= RADIUS for c in top[b])
        assert np.all(np.diff(probs[b]) <= 0) and 0 < probs[b].sum() <= 1
    save_checkpoint(tmp_path / "cell.pt", model)
    again = load_model(tmp_path / "cell.pt")
    assert again.config.output.head == "cell" and cells.predict_cells(again, x, mask, ll, k=5)[0] == top


def test_config_and_the_other_heads_refuse_misuse(ais):
    for name in list_presets():  # no bundled preset has a cell head; its fields sit in the head's dict
        assert load_preset(name).output.head != "cell"
        assert {"cell_resolution", "cell_radius"} <= set(load_preset(name).to_dict()["output"])
    with pytest.raises(ValueError, match="patch_in = patch_out = 1"):
        GPTConfig.from_dict(dict(head="cell", patch_out=4))
    with pytest.raises(ValueError, match="cell_radius"):
        GPTConfig.from_dict(dict(head="cell", cell_radius=0))
    model = make_model(ais)
    x, mask = torch.tensor(ais.x[:2]), torch.tensor(ais.mask[:2])
    with pytest.raises(ValueError, match="cells.cell_loss"):
        model.loss(x, mask)
    with pytest.raises(ValueError, match="not 'cell'"):
        cells.cell_loss(
            TrajGPT(GPTConfig.from_dict({**SMALL, "head": "mse"})),
            x,
            mask,
            torch.tensor(lonlat_of(ais.subset(slice(0, 2)))),
        )
