"""Masked-span infilling (TrajGPT / GLM's blank infilling, with a causal decoder).

A span of interior points ``[s, e)`` of a window of n points (1 <= s < e <= n - 1) is hidden.
The model reads one sequence of n + 2 tokens, still strictly causal:

    part A (the observed track)                          | part B (the answers)
    x_0 .. x_{s-1}  [MASK]  x_e' x_{e+1} .. x_{n-1}  [SEP]  x_s .. x_{e-1}

``x_e'`` is point e with its step taken from point s-1 (the displacement and time across the
gap: observed, since both ends are), so nothing in part A depends on the hidden points. After
``[SEP]`` the model generates the span autoregressively, exactly like next-point forecasting:
the output at SEP predicts ``x_s`` (its step from s-1), the output at answer point ``x_p``
predicts ``x_{p+1}``, and the last one predicts the ORIGINAL ``x_e`` (the step that closes the
gap), so a reconstruction learns to land on the far end. Answer points carry a learned ANS
vector (part B's segment), MASK and SEP are learned vectors too (``TrajGPT.special``).

The way to go: SEP and every answer token also get (``TrajGPT.to_go_proj``) the even-pace step
that would reach the far end, ``(east, north still to go) / (points left)``, and the count of
points left. That step is also their ANCHOR (``targets.py``: the current step of forecasting
becomes the even-pace step of infilling), so a zero head output reproduces linear
interpolation, the baseline, and the network learns the corrections (turns, speed changes).

Travel time as masked time: with ``hide_time`` a row also hides when the far end was reached:
``log_dt`` of ``x_e'`` and the calendar features of every point after the gap are replaced by
the training mean (0 after normalization) and flagged NO_TIME; elapsed-time coordinates (st-rope,
time2vec) treat the gap as instantaneous. The predicted time gaps of the answers then add up to
the travel time from s-1 to e.

Positions: learned / rope positions are the sequence index. st-rope and time2vec read
coordinates (east m, north m, elapsed s): running sums over the sequence where MASK and SEP
stand still at point s-1 and the answers restart from point s-1, so every token sits where (and
when) its point is.

``infill_loss`` draws one span per row (``sample_spans``) and scores the answers with the
model's head loss; ``infill`` reconstructs given spans of a ``WindowSet`` (lon/lat degrees via
``decode_step``, times as int64 ns) and ``linear_interpolation`` is the baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trajfm.features.encode import decode_step, next_point_features
from trajfm.geo import displacement_m
from trajfm.model import heads, targets
from trajfm.model.inputs import TYPE_ANS, TYPE_MASK, TYPE_NO_TIME, TYPE_POINT, TYPE_SEP, ModelInputs

DX, DY, LOG_DT = 0, 1, 2  # raw feature columns of the step
CALENDAR = slice(3, None)  # time-of-day and day-of-week cycles


@dataclass
class InfillSequences:
    """B infilling sequences of width W = L + 2 (padding at the end). Raw units throughout."""

    x: torch.Tensor  # (B, W, F) raw features (MASK / SEP rows hold the feature means)
    mask: torch.Tensor  # (B, W) bool real tokens
    types: torch.Tensor  # (B, W) long token types (inputs.TYPE_*)
    coords: torch.Tensor  # (B, W, 3) float64 east m, north m, elapsed s
    lonlat: torch.Tensor | None  # (B, W, 2) float64 degrees, when given
    target: torch.Tensor  # (B, W, T) raw targets of each token's prediction (0 where not scored)
    cur: torch.Tensor  # (B, W, F) raw features each prediction is made from; (dx, dy) = the even-pace step
    valid: torch.Tensor  # (B, W) bool: SEP and answer tokens, which are scored
    sep: torch.Tensor  # (B,) long index of SEP
    remain: torch.Tensor  # (B, W, 2) float64 east, north metres from each scored token's point to point e
    left: torch.Tensor  # (B, W) long predictions left to reach point e (SEP: span + 1; 0 where not scored)


def sample_spans(n_real: torch.Tensor, config, generator=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One span per row: (start, end, hide_time), each (B,), on the CPU.

    Span length uniform in ``[infill_min_span, infill_max_span]`` (capped at n - 2), start
    uniform among the positions that leave a point before and after; rows with fewer than 3
    points get ``start = end = 0`` (no span: they are not scored). Draws come from
    ``generator`` or the global CPU RNG.
    """
    n = n_real.cpu().long()
    u = torch.rand(len(n), 3, generator=generator)
    hi = (n - 2).clamp(min=1).clamp(max=config.infilling.infill_max_span)  # longest span each row allows
    lo = torch.minimum(torch.full_like(hi, config.infilling.infill_min_span), hi)
    m = lo + (u[:, 0] * (hi - lo + 1)).long().clamp(max=(hi - lo))
    start = 1 + (u[:, 1] * (n - 1 - m).clamp(min=1)).long().clamp(max=(n - 2 - m).clamp(min=0))
    ok = n >= 3
    start, end = torch.where(ok, start, 0), torch.where(ok, start + m, 0)
    hide = (u[:, 2] < config.infilling.infill_time_prob) & ok
    return start, end, hide


def build_sequences(
    x_raw: torch.Tensor,
    mask: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    hide_time: torch.Tensor,
    feat_mean: torch.Tensor,
    lonlat: torch.Tensor | None = None,
    gap: torch.Tensor | None = None,
) -> InfillSequences:
    """Infilling sequences (module docstring) from raw windows ``x_raw`` (B, L, F), prefix masks
    (B, L), spans ``[start, end)`` (B,) and ``hide_time`` (B,) bool. A row with ``end <= start``
    gets no tokens. ``gap`` (B, 3) raw (dx_m, dy_m, seconds) from point s-1 to point e; default:
    the sum of the hidden steps (then the answers' features are read from ``x_raw``; ``infill``
    passes the observed gap and writes the answers itself)."""
    B, L, F = x_raw.shape
    dev = x_raw.device
    n = mask.sum(1).long()  # (B,) real points (a prefix)
    s, e = start.to(dev).long()[:, None], end.to(dev).long()[:, None]
    ok = (end.to(dev) > start.to(dev))[:, None] & (s >= 1) & (e <= n[:, None] - 1)  # (B, 1)
    hide = hide_time.to(dev)[:, None] & ok
    zero = torch.zeros((), dtype=x_raw.dtype, device=dev)
    x_raw = torch.where(mask[..., None], x_raw, zero)  # padding garbage never travels

    W = L + 2
    j = torch.arange(W, device=dev)[None, :]  # (1, W) sequence slots
    k = n[:, None] - e  # points after the gap, x_e' included
    sep = s + k + 1
    is_pre, is_mask, is_sep = j < s, j == s, j == sep
    is_post = (j > s) & (j < sep)
    is_ans = (j > sep) & (j < n[:, None] + 2)
    src = torch.where(is_pre, j, torch.where(is_post, e + (j - s - 1), torch.where(is_ans, s + (j - sep - 1), s - 1)))
    src = src.clamp(0, L - 1)  # (B, W) the window point each slot shows (MASK, SEP: point s-1)
    seq_mask = (j < n[:, None] + 2) & ok
    rows = torch.arange(B, device=dev)[:, None]

    x = x_raw[rows, src]  # (B, W, F)
    csum = _steps(x_raw).cumsum(1)  # (B, L, 3) running sums of the steps
    if gap is None:  # the hidden steps s..e add up to the step across the gap
        gap = _at(csum, e) - _at(csum, s - 1)  # (B, 3)
    gap = gap.to(dev).double()
    gap_feat = torch.stack([gap[:, 0], gap[:, 1], torch.log1p(gap[:, 2].clamp(min=0.0))], dim=-1).to(x.dtype)
    is_gap = j == s + 1  # x_e'
    x = torch.cat([torch.where(is_gap[..., None], gap_feat[:, None, :], x[..., :3]), x[..., 3:]], dim=-1)
    # Hidden time: the gap's duration and the calendar of every later point of part A.
    mean = feat_mean.to(dev, x.dtype)
    hidden = torch.zeros_like(x, dtype=torch.bool)
    hidden[..., LOG_DT] = is_gap & hide
    hidden[..., CALENDAR] = (is_post & hide)[..., None]
    x = torch.where(hidden, mean.expand_as(x), x)
    marker = is_mask | is_sep
    x = torch.where(marker[..., None], mean.expand_as(x), x)

    types = torch.full((B, W), TYPE_POINT, dtype=torch.long, device=dev)
    types = torch.where(is_post & hide, TYPE_NO_TIME, types)
    types = torch.where(is_ans, TYPE_ANS, types)
    types = torch.where(is_mask, TYPE_MASK, types)
    types = torch.where(is_sep, TYPE_SEP, types)

    # Coordinates: running sums of the steps; MASK and SEP do not move, the hidden gap takes no
    # time, and the answers restart from point s-1 (subtract what part A added after it).
    step = _steps(x)
    step[..., 2] = torch.where(is_gap & hide, 0.0, step[..., 2])
    cum = torch.where((seq_mask & ~marker)[..., None], step, 0.0).cumsum(1)  # (B, W, 3)
    back = _at(cum, sep) - _at(cum, s - 1)  # (B, 3) what part A added after point s-1
    coords = torch.where((j >= sep)[..., None], cum - back[:, None, :], cum)

    tgt_src = torch.where(is_sep, s, src + 1).clamp(0, L - 1)
    valid = (is_sep | is_ans) & seq_mask
    target = torch.where(valid[..., None], x_raw[rows, tgt_src], zero)[..., :3]
    # The way to go from each scored token's point (SEP: s-1, answer x_p: p) to point e.
    walked = csum[rows, src][..., :2] - _at(csum, s - 1)[:, None, :2]  # (B, W, 2) from s-1 to the point
    remain = torch.where(valid[..., None], gap[:, None, :2] - walked, 0.0)
    left = torch.where(valid, e - src, 0)
    cur = torch.where(valid[..., None], x_raw[rows, src], zero)
    cur = _with_even_pace(cur, remain, left)
    ll = None if lonlat is None else lonlat[rows, src].double()
    return InfillSequences(x, seq_mask, types, coords, ll, target, cur, valid, sep[:, 0], remain, left)


def _with_even_pace(cur: torch.Tensor, remain: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """``cur`` with (dx, dy) replaced by ``remain / left`` where ``left > 0`` (the anchor)."""
    pace = (remain / left.clamp(min=1)[..., None]).to(cur.dtype)
    return torch.cat([torch.where((left > 0)[..., None], pace, cur[..., :2]), cur[..., 2:]], dim=-1)


def to_go_features(model: nn.Module, seq: InfillSequences) -> torch.Tensor:
    """(B, W, N_TO_GO) model inputs of the way to go: even-pace step / scale, points left / max span."""
    scale_m = model.feat_std[:2].square().mean().sqrt()
    pace = seq.cur[..., :2] / scale_m
    left = seq.left.to(pace.dtype)[..., None] / (model.config.infilling.infill_max_span + 1)
    zero = torch.zeros((), dtype=pace.dtype, device=pace.device)
    return torch.where(seq.valid[..., None], torch.cat([pace, left], dim=-1), zero)


def sequence_inputs(model: nn.Module, seq: InfillSequences, kind=None) -> ModelInputs:
    """The ``ModelInputs`` of infilling sequences for ``model`` (a ``TrajGPT``)."""
    return ModelInputs(
        seq.x, seq.mask, seq.lonlat, kind, coords=seq.coords, types=seq.types, to_go=to_go_features(model, seq)
    )


def _steps(x: torch.Tensor) -> torch.Tensor:
    """(B, L, 3) float64 (dx_m, dy_m, dt_s) of raw features (B, L, F)."""
    return torch.cat([x[..., :2], torch.expm1(x[..., 2:3].clamp(0.0, 20.0))], dim=-1).double()


def _at(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """(B, C) rows of ``t`` (B, L, C) at indices ``i`` (B, 1), clamped into range."""
    return t.gather(1, i.clamp(0, t.shape[1] - 1)[:, :, None].expand(-1, 1, t.shape[2]))[:, 0]


def _scored(model: nn.Module, seq: InfillSequences, kind=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W, W_out) head outputs for the first predicted point of every token, and targets in head units."""
    c = model.config
    out = model(sequence_inputs(model, seq, kind))
    out = out.unflatten(-1, (c.patching.patch_out, -1))[:, :, 0]  # (B, W, W_out): infilling scores one point per token
    if targets.is_plain(c):
        tgt = (seq.target - model.feat_mean[:3]) / model.feat_std[:3]
    else:
        tgt = targets.encode(c, seq.target, seq.cur, model.feat_mean, model.feat_std)
    return out, tgt


def infill_loss(model: nn.Module, x_raw, mask, lonlat=None, kind=None, generator=None) -> torch.Tensor:
    """Head loss (MSE / Huber per value, or mixture NLL per point) of the answers of one random
    span per window. Spans come from ``generator``; without one, from the global RNG while
    training and from a fixed seed in eval mode (comparable validation losses)."""
    c = model.config
    mask = mask.to(torch.bool)
    width = c.n_tokens - 2  # the sequence adds MASK and SEP
    x_raw, mask = x_raw[:, :width], mask[:, :width]
    lonlat = None if lonlat is None else lonlat[:, :width]
    if generator is None and not model.training:
        generator = torch.Generator().manual_seed(0)
    start, end, hide = sample_spans(mask.sum(1), c, generator)
    seq = build_sequences(x_raw, mask, start, end, hide, model.feat_mean, lonlat)
    out, tgt = _scored(model, seq, kind)
    return heads.head_loss(c, out[:, :, None], tgt[:, :, None], seq.valid[:, :, None])


# --- reconstruction ------------------------------------------------------------------------


@dataclass
class InfillResult:
    """Reconstructed spans; rows are windows, columns the hidden points (padded to the longest span)."""

    lon: np.ndarray  # (N, M) float64 degrees of the hidden points (NaN beyond a row's span)
    lat: np.ndarray  # (N, M) float64 degrees
    t_ns: np.ndarray  # (N, M) int64 UTC ns, predicted (0 beyond a row's span)
    span_mask: np.ndarray  # (N, M) bool: column m < end - start
    arrival_t_ns: np.ndarray  # (N,) int64 predicted time of reaching point e
    travel_time_s: np.ndarray  # (N,) float64 predicted seconds from point s-1 to point e


def _spans(span, N: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(span, tuple) and len(span) == 2 and np.ndim(span[0]) == 0:
        return np.full(N, int(span[0])), np.full(N, int(span[1]))
    arr = np.asarray(span, dtype=np.int64)
    if arr.shape != (N, 2):
        raise ValueError(
            f"span must be (start, end) or an (N, 2) array of [start, end) per window, got shape {arr.shape}"
        )
    return arr[:, 0].copy(), arr[:, 1].copy()


@torch.no_grad()
def infill(
    model: nn.Module, ws, span, *, hide_time: bool = False, how: str = "mode", batch_size: int = 256
) -> InfillResult:
    """Reconstruct hidden spans of the windows ``ws`` (a ``WindowSet``) with an infilling model.

    ``span``: ``(start, end)`` for every window, or an (N, 2) array; points ``[start, end)`` are
    hidden, and need ``1 <= start < end <= n - 1`` (a known point on each side). Only the points
    outside the span are read: the step across the gap comes from the fixes s-1 and e (lon/lat
    degrees, int64 ns). ``hide_time``: the arrival time at e is hidden too, and predicted
    (``travel_time_s``). Points are generated one at a time after SEP (``how``: "mode" / "mean"
    / "sample") and turned into fixes by ``decode_step`` in float64 degrees and int64 ns.
    """
    c = model.config
    if not hasattr(model, "special"):
        raise ValueError("this model was not trained to infill (objective 'next'): use objective 'infill' or 'mixed'")
    N = len(ws)
    start, end = _spans(span, N)
    n = ws.mask.sum(axis=1)
    if N and ((start < 1).any() or (end <= start).any() or (end > n - 1).any()):
        raise ValueError("each span [start, end) needs 1 <= start < end <= n - 1 (a real point before and after)")
    if N and (n + 2 > c.n_tokens).any():
        raise ValueError(f"windows of up to {c.n_tokens - 2} points fit this model's block_size with MASK and SEP")
    M = int((end - start).max()) if N else 0
    res = InfillResult(
        np.full((N, M), np.nan),
        np.full((N, M), np.nan),
        np.zeros((N, M), np.int64),
        np.arange(M)[None, :] < (end - start)[:, None],
        np.zeros(N, np.int64),
        np.zeros(N),
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, N, batch_size):
            b = np.arange(i, min(i + batch_size, N))
            _infill_batch(model, ws, b, start[b], end[b], hide_time, how, res, device)
    finally:
        model.train(was_training)
    return res


def _infill_batch(model, ws, b, start, end, hide_time, how, res: InfillResult, device) -> None:
    width = int(ws.mask[b].sum(1).max())
    x = ws.x[b, :width].copy()
    mask = ws.mask[b, :width]
    rows = np.arange(len(b))
    for r in rows:  # never read the hidden points
        x[r, start[r] : end[r]] = 0.0
    a, z = start - 1, end
    lon_a, lat_a, t_a = ws.lon[b, a], ws.lat[b, a], ws.t_ns[b, a]
    east, north = displacement_m(lon_a, lat_a, ws.lon[b, z], ws.lat[b, z])
    gap = np.stack([east, north, (ws.t_ns[b, z] - t_a).astype(np.float64) / 1e9], axis=-1)
    lonlat = torch.from_numpy(np.stack([ws.lon[b, :width], ws.lat[b, :width]], -1)) if model.needs_lonlat else None
    hide = torch.full((len(b),), bool(hide_time))
    xt = torch.from_numpy(x).to(device)
    seq = build_sequences(
        xt,
        torch.from_numpy(mask).to(device),
        torch.from_numpy(start),
        torch.from_numpy(end),
        hide,
        model.feat_mean,
        None if lonlat is None else lonlat.to(device),
        torch.from_numpy(gap),
    )
    sep = seq.sep.cpu().numpy()
    m = end - start
    lon, lat, t_ns = lon_a.astype(np.float64), lat_a.astype(np.float64), t_a.astype(np.int64)
    for q in range(int(m.max()) + 1):  # q < m: hidden point s+q; q = m: the step that reaches e
        cols = torch.from_numpy(np.minimum(sep + q, seq.x.shape[1] - 1)).to(device)  # rows past their span: unused
        rr = torch.from_numpy(rows).to(device)
        out = model(sequence_inputs(model, seq))
        step = model.decode(out[rr, cols], how, cur=seq.cur[rr, cols])[:, 0].double().cpu().numpy()  # (B, T) raw
        lon2, lat2, t2 = decode_step(lon, lat, t_ns, step[:, 0], step[:, 1], step[:, 2])
        live = q < m  # rows still inside their span
        arrive = q == m
        res.arrival_t_ns[b[arrive]] = t2[arrive]
        if not live.any():
            break
        cl = np.minimum(q, res.lon.shape[1] - 1)
        res.lon[b[live], cl], res.lat[b[live], cl], res.t_ns[b[live], cl] = lon2[live], lat2[live], t2[live]
        feats = next_point_features(lon, lat, t_ns, lon2, lat2, t2)  # (B, F) of the new point
        _write_answer(seq, rows[live], sep[live] + q + 1, feats[live], step[live], lon2[live], lat2[live], device)
        lon = np.where(live, lon2, lon)
        lat = np.where(live, lat2, lat)
        t_ns = np.where(live, t2, t_ns)
    res.travel_time_s[b] = (res.arrival_t_ns[b] - t_a).astype(np.float64) / 1e9


def _write_answer(seq: InfillSequences, rows, cols, feats, step, lon, lat, device) -> None:
    """Put a generated point into answer slot ``cols`` of ``rows``: features, coordinates, lon/lat."""
    r, c = torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)
    seq.x[r, c] = torch.from_numpy(feats).to(device, seq.x.dtype)
    d = torch.from_numpy(np.stack([step[:, 0], step[:, 1], np.expm1(np.clip(step[:, 2], 0.0, 20.0))], -1)).to(device)
    seq.coords[r, c] = seq.coords[r, c - 1] + d.to(seq.coords.dtype)
    seq.remain[r, c] = seq.remain[r, c - 1] - d[:, :2].to(seq.remain.dtype)  # the next answer is predicted from here
    seq.left[r, c] = seq.left[r, c - 1] - 1
    seq.cur[r, c] = _with_even_pace(seq.x[r, c], seq.remain[r, c], seq.left[r, c])
    if seq.lonlat is not None:
        seq.lonlat[r, c] = torch.from_numpy(np.stack([lon, lat], -1)).to(device, seq.lonlat.dtype)


def linear_interpolation(ws, span) -> tuple[np.ndarray, np.ndarray]:
    """Baseline: hidden points evenly spaced on the straight line (in degrees; spans are short)
    from point s-1 to point e, as (lon, lat) (N, M) float64 degrees, NaN beyond a row's span."""
    N = len(ws)
    start, end = _spans(span, N)
    M = int((end - start).max()) if N else 0
    lon, lat = np.full((N, M), np.nan), np.full((N, M), np.nan)
    for r in range(N):
        a, z = start[r] - 1, end[r]
        frac = np.arange(1, z - a) / (z - a)  # the hidden times are unknown: even spacing
        lon[r, : z - a - 1] = ws.lon[r, a] + frac * (ws.lon[r, z] - ws.lon[r, a])
        lat[r, : z - a - 1] = ws.lat[r, a] + frac * (ws.lat[r, z] - ws.lat[r, a])
    return lon, lat
