"""Batched autoregressive generation with a KV cache.

``Rollout`` holds B trajectories of different lengths (no left padding needed) and, for models
with one point per token, a ``KVCache``: each row's keys and values live in slots 0..n-1 of a
(B, H, block_size, Dh) buffer per layer, a new point of row b goes to slot n_b, and a query
sees the slots up to its own. A step then costs one token per row instead of the whole prefix.

    r = Rollout(model, x, n_real)          # prefill: raw (B, L, F) contexts, n_real (B,) lengths
    step = r.predict(how="mode")           # (B, Q, T) raw dx_m, dy_m, log_dt_s of the next Q points
    r.extend(features)                     # (B, k, F) raw features of the k points actually taken

The caller turns predicted steps into fixes and features (``trajfm.evaluate.forecast`` does it
in float64 degrees and int64 nanoseconds), because calendar features need absolute time.

Beyond ``block_size``: the model has seen no longer sequence (and learned positions have no
entry for it), so, as without a cache, each row keeps only its last ``block_size`` points. Once a
row would pass ``block_size``, the cache is dropped and every later step recomputes the window
of the last ``block_size`` points: exactly what the no-cache rollout computes (a cache cannot
slide: cached keys of layers >= 2 encode context that has left the window). Patched models
(``patch_in > 1``) always recompute; they make ``horizon / patch_out`` calls only.

With ``norm="context"`` each row's units come from its context when the rollout starts and stay
fixed while it grows (the points it predicts never rescale it).

Both paths give the same predictions up to float rounding (tests/test_model_generate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trajfm.model.inputs import ModelInputs
from trajfm.model.patching import last_points


@dataclass
class LayerKV:
    """One layer's view of the cache, for the tokens of the current call."""

    k: torch.Tensor  # (B, H, C, Dh), written in place
    v: torch.Tensor  # (B, H, C, Dh)
    slots: torch.Tensor  # (B, Lt) where this call's tokens go

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, Lt, Dh) new keys/values; return every slot's (B, H, C, Dh)."""
        idx = self.slots[:, None, :, None].expand_as(k)
        self.k.scatter_(2, idx, k.to(self.k.dtype))  # (autocast may hand bf16 to a float32 cache)
        self.v.scatter_(2, idx, v.to(self.v.dtype))
        return self.k, self.v


class KVCache:
    """Keys and values of every layer for B sequences of up to ``block_size`` tokens."""

    def __init__(self, config, batch: int, device: torch.device, dtype: torch.dtype = torch.float32):
        C, H, Dh = config.n_tokens, config.n_head, config.head_dim
        self.k = torch.zeros(config.n_layer, batch, H, C, Dh, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # tokens stored = next free slot
        self.real = torch.zeros(batch, C, dtype=torch.bool, device=device)  # slots holding real tokens
        self.last_coords = torch.zeros(batch, 3, dtype=torch.float64, device=device)  # st coords of the last token
        self.last_step = torch.zeros(batch, 2, dtype=dtype, device=device)  # raw (dx_m, dy_m) of the last point
        self._slots = None  # (B, Lt) slots of the call in progress (set by ``begin``)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def begin(self, Lt: int) -> torch.Tensor:
        """Slots (= token positions) (B, Lt) of ``Lt`` tokens appended to every row by the coming call."""
        slots = self.length[:, None] + torch.arange(Lt, device=self.length.device)
        if int(slots.max()) >= self.capacity:
            raise ValueError(f"KV cache full: {int(slots.max()) + 1} tokens > block_size {self.capacity}")
        self._slots = slots
        return slots

    def attention_mask(self, tmask: torch.Tensor) -> torch.Tensor:
        """(B, 1, Lt, C) for the appended tokens with (B, Lt) reality ``tmask``: causal over
        slots, never a padded key, always the query itself (as ``gpt.attention_mask``)."""
        slots = self._slots  # (B, Lt)
        self.real.scatter_(1, slots, tmask)
        key = torch.arange(self.capacity, device=slots.device)  # (C,)
        visible = (key <= slots[..., None]) & (self.real[:, None, :] | (key == slots[..., None]))  # (B, Lt, C)
        return visible[:, None]

    def layer(self, i: int) -> LayerKV:
        return LayerKV(self.k[i], self.v[i], self._slots)

    def advance(self, tmask: torch.Tensor, tok_coords: torch.Tensor | None, steps: torch.Tensor | None = None) -> None:
        """After a call: count its real tokens (a prefix of each row), keep the last coordinates
        and the last point's (dx_m, dy_m) ``steps`` (B, Lt, 2) (one point per token)."""
        n_new = tmask.sum(1)  # (B,)
        i = (n_new - 1).clamp_min(0)
        rows = torch.arange(len(i), device=i.device)
        if tok_coords is not None:
            self.last_coords = torch.where((n_new > 0)[:, None], tok_coords[rows, i], self.last_coords)
        if steps is not None:
            self.last_step = torch.where((n_new > 0)[:, None], steps[rows, i].to(self.last_step.dtype), self.last_step)
        self.length = self.length + n_new


class Rollout:
    """Autoregressive state of B trajectories: their raw features so far, and a KV cache."""

    @torch.no_grad()
    def __init__(self, model, x: torch.Tensor, n_real: torch.Tensor, lonlat=None, kind=None, use_cache: bool = True):
        """``x`` (B, L, F) raw features padded at the end; ``n_real`` (B,) real lengths >= 1;
        ``lonlat`` (B, L, 2) float64 degrees (models with a space encoding); ``kind`` (B,) long."""
        self.model, self.config = model, model.config
        device = next(model.parameters()).device
        self.x = torch.as_tensor(x, dtype=torch.float32).to(device).clone()  # extend writes into it
        self.n = torch.as_tensor(n_real, dtype=torch.long).to(device).clone()
        if self.n.ndim != 1 or len(self.n) != self.x.shape[0] or (self.n < 1).any() or (self.n > self.x.shape[1]).any():
            raise ValueError("n_real must give, per row, a length between 1 and the width of x")
        if model.needs_lonlat and lonlat is None:
            raise ValueError("this model encodes absolute position: pass lonlat (B, L, 2) degrees")
        self.lonlat = None if lonlat is None else torch.as_tensor(lonlat, dtype=torch.float64).to(device).clone()
        self.kind = None if kind is None else torch.as_tensor(kind, dtype=torch.long).to(device)
        self.rows = torch.arange(self.x.shape[0], device=device)
        self.cache, self._out = None, None
        self.norm = None  # norm="context": each row's units, from its context, kept for the whole rollout
        if self.config.normalisation.norm == "context":
            width = self.x.shape[1]
            self.norm = model.context_scale(self.x, torch.arange(width, device=device)[None, :] < self.n[:, None])
        if use_cache and self.config.patching.patch_in == 1 and int(self.n.max()) <= self.config.n_tokens:
            self.cache = KVCache(self.config, self.x.shape[0], device, self.x.dtype)
            width = int(self.n.max())
            mask = torch.arange(width, device=device)[None, :] < self.n[:, None]
            lonlat_w = None if self.lonlat is None else self.lonlat[:, :width]
            out = self._cached(self.x[:, :width], mask, lonlat_w)  # (B, width, Q*W)
            self._out = out[self.rows, self.n - 1]

    @property
    def uses_cache(self) -> bool:
        """True while predictions come from the KV cache (False after passing block_size)."""
        return self.cache is not None

    @torch.no_grad()
    def predict(self, how: str = "mode", temperature: float = 1.0, generator=None) -> torch.Tensor:
        """(B, Q, T) raw (dx_m, dy_m, log_dt_s) of the next Q points of every row."""
        out = self._out if self.cache is not None else self._recompute()
        cur = self.x[self.rows, self.n - 1]  # (B, F) each row's last point (anchored / heading-frame heads)
        return self.model.decode(out, how, temperature, generator, cur, self.norm)

    @torch.no_grad()
    def extend(self, feats: torch.Tensor, lonlat=None) -> None:
        """Append (B, k, F) raw features (and (B, k, 2) degrees) of k new real points per row."""
        feats = torch.as_tensor(feats, dtype=torch.float32).to(self.x.device)
        k = feats.shape[1]
        if self.lonlat is not None and lonlat is None:
            raise ValueError("this rollout tracks absolute positions: pass lonlat (B, k, 2) degrees")
        self._grow(int(self.n.max()) + k)
        cols = self.n[:, None] + torch.arange(k, device=self.x.device)  # (B, k)
        self.x[self.rows[:, None], cols] = feats
        if self.lonlat is not None:
            lonlat = torch.as_tensor(lonlat, dtype=torch.float64).to(self.x.device)
            self.lonlat[self.rows[:, None], cols] = lonlat
        else:
            lonlat = None  # the model does not read positions
        if self.cache is not None:
            if int(self.n.max()) + k <= self.cache.capacity:
                ones = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
                self._out = self._cached(feats, ones, lonlat)[:, -1]
            else:  # past block_size: recompute from now on (see the module docstring)
                self.cache, self._out = None, None
        self.n = self.n + k

    def _cached(self, x: torch.Tensor, mask: torch.Tensor, lonlat) -> torch.Tensor:
        return self.model(ModelInputs(x, mask, lonlat, self.kind, norm=self.norm), cache=self.cache)  # (B, Lt, Q*W)

    def _recompute(self) -> torch.Tensor:
        """(B, Q*W) head outputs after each row's last point, from its last block_size points."""
        P = self.config.patching.patch_in
        keep = self.n.clamp(max=self.config.block_size)
        if P > 1:  # whole patches ending at the last point; one left-padded patch if too short
            keep = torch.where(keep >= P, (keep // P) * P, torch.full_like(keep, P))
        x, mask = last_points(self.x, self.n, keep)
        lonlat = None if self.lonlat is None else last_points(self.lonlat, self.n, keep)[0]
        out = self.model(ModelInputs(x, mask, lonlat, self.kind, norm=self.norm))  # (B, Lt, Q*W)
        return out[self.rows, keep // P - 1]

    def _grow(self, width: int) -> None:
        if width <= self.x.shape[1]:
            return
        extra = max(width - self.x.shape[1], self.x.shape[1])  # double: amortized O(1) per step
        self.x = torch.cat([self.x, self.x.new_zeros(self.x.shape[0], extra, self.x.shape[2])], dim=1)
        if self.lonlat is not None:
            self.lonlat = torch.cat([self.lonlat, self.lonlat.new_zeros(self.lonlat.shape[0], extra, 2)], dim=1)
