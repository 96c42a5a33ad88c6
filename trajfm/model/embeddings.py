"""Optional input encodings, added to the token embedding (``TrajGPT.embed``).

The base embedding is a linear projection of the normalized point features (the tutorial's),
or a residual MLP over a patch of them (``patching.py``). On top, behind config flags:

- ``time_encoding="time2vec"``: Time2Vec (Kazemi et al. 2019) of two scalars derived from the
  features: hours elapsed since the sequence start (from ``point_coords``) and the local solar
  hour of the week (0..168, from the ``dow_sin, dow_cos`` cycle). Per scalar tau: one linear
  term ``w0 tau + b0`` and ``time2vec_dim - 1`` learned periodic terms ``sin(w tau + b)``. Never
  epoch seconds: float32 epoch seconds are quantized to 128 s (a tutorial trap).
- ``space_encoding="sinusoidal"``: multi-scale sinusoidal encoding of the absolute position
  (Space2Vec's "theory" encoder): (lon, lat) -> (east, north) metres of a sinusoidal projection,
  projected on three unit vectors 120 degrees apart, sin and cos at ``space_scales`` wavelengths
  from ``space_min_m`` to ``space_max_m``. Phases are taken in float64 (metres up to 2e7
  against wavelengths of 100 m) and only then cast. This is the one input that is NOT
  region-agnostic: it lets a model learn places, and needs (lon, lat) degrees per point.
- ``n_kinds > 0``: a learned vector per mover kind (vessel, person, ...; index 0 = unknown).
- ``turn_inputs``: each step is also given as (along, left) metres in the frame of the step
  before it (``turn_frame_steps``): speed and turn as the mover feels them, the same numbers
  whatever the compass heading, next to the east/north step; divided by ``scale_m``, the rms of
  the dx, dy standard deviations.
- ``length_input``: ``log1p(step length m) / log1p(scale_m)``, so that a moored vessel's 2 m of
  GPS jitter and a 20 m drift read differently (both are ~0 after dividing by a 160 m std).
Both are concatenated to the normalized features before the input projection (``extra_inputs``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from trajfm.geo import EARTH_RADIUS_M
from trajfm.model.config import GPTConfig
from trajfm.model.targets import HEADING_MIN_M, heading_basis

DOW_SIN, DOW_COS = 5, 6  # columns of the day-of-week cycle in the raw features
WEEK_H = 168.0


def time_scalars(x_raw: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(B, L, 2) float32: hours since the sequence start, local solar hour of the week."""
    elapsed_h = coords[..., 2] / 3600.0  # float64 seconds -> hours
    phase = torch.atan2(x_raw[..., DOW_SIN].double(), x_raw[..., DOW_COS].double()) % (2 * math.pi)
    week_h = phase / (2 * math.pi) * WEEK_H
    return torch.stack([elapsed_h, week_h], dim=-1).float()


class Time2Vec(nn.Module):
    """(B, L, S) time scalars in hours -> (B, L, S * dim): per scalar [w0 t + b0, sin(w t + b)]."""

    def __init__(self, n_scalars: int, dim: int):
        super().__init__()
        # Periodic terms start at periods from 1 hour to 1 week, where mobility has its rhythms.
        periods_h = torch.exp(torch.linspace(0.0, math.log(WEEK_H), max(dim - 1, 1)))[: dim - 1]
        w = torch.cat([torch.full((1,), 1.0 / WEEK_H), 2 * math.pi / periods_h])
        self.w = nn.Parameter(w.repeat(n_scalars, 1))  # (S, dim) radians per hour
        self.b = nn.Parameter(torch.zeros(n_scalars, dim))  # (S, dim)

    def forward(self, tau: torch.Tensor) -> torch.Tensor:
        z = tau[..., None] * self.w + self.b  # (B, L, S, dim)
        z = torch.cat([z[..., :1], torch.sin(z[..., 1:])], dim=-1)
        return z.flatten(-2)  # (B, L, S * dim)


class SpaceEncoding(nn.Module):
    """(B, L, 2) float64 (lon, lat) degrees -> (B, L, 6 * space_scales) sin/cos (no parameters)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        n = config.inputs.space_scales
        lo, hi = math.log(config.inputs.space_min_m), math.log(config.inputs.space_max_m)
        self.wavelength_m = (
            torch.exp(torch.linspace(lo, hi, n, dtype=torch.float64))
            if n > 1
            else torch.tensor([config.inputs.space_min_m], dtype=torch.float64)
        )
        angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3], dtype=torch.float64)
        self.directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (3, 2) unit vectors

    @property
    def width(self) -> int:
        return 6 * len(self.wavelength_m)

    def forward(self, lonlat: torch.Tensor) -> torch.Tensor:
        lonlat = lonlat.double()
        lat = torch.deg2rad(lonlat[..., 1])
        east = EARTH_RADIUS_M * torch.deg2rad(lonlat[..., 0]) * torch.cos(lat)  # sinusoidal projection
        north = EARTH_RADIUS_M * lat
        xy = torch.stack([east, north], dim=-1)  # (B, L, 2) metres
        proj = xy @ self.directions.to(xy.device).T  # (B, L, 3)
        cycles = proj[..., None] / self.wavelength_m.to(xy.device)  # (B, L, 3, S)
        phase = (2 * math.pi) * torch.remainder(cycles, 1.0)  # exact in float64, small after remainder
        return torch.cat([phase.sin(), phase.cos()], dim=-1).flatten(-2).float()  # (B, L, 6S)


def turn_frame_steps(x_raw: torch.Tensor, mask: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, 2) (along, left) metres of each step (dx_m, dy_m) in the frame of the step before it.

    ``prev`` (B, 2): the step before the first one (a KV cache's last point), else none. Where
    the step before is shorter than ``HEADING_MIN_M`` (stopped, or none) the step's own heading
    is used, so the step reads (length, 0). Padding gives 0 and never reaches a real point.
    """
    zero = torch.zeros((), dtype=x_raw.dtype, device=x_raw.device)
    step = torch.where(mask[..., None], x_raw[..., :2], zero)  # (B, L, 2)
    first = torch.zeros_like(step[:, :1]) if prev is None else prev[:, None, :].to(step.dtype)
    before = torch.cat([first, step[:, :-1]], dim=1)
    has_heading = (before.norm(dim=-1) >= HEADING_MIN_M)[..., None]
    ux, uy = heading_basis(torch.where(has_heading, before, step))
    along = step[..., 0] * ux + step[..., 1] * uy
    left = -step[..., 0] * uy + step[..., 1] * ux
    return torch.stack([along, left], dim=-1)


def extra_inputs(
    config: GPTConfig, x_raw: torch.Tensor, mask: torch.Tensor, scale_m: torch.Tensor, prev=None
) -> torch.Tensor:
    """(B, L, 2 * turn_inputs + length_input) extra inputs per point (see the module docstring)."""
    parts = []
    if config.inputs.turn_inputs:
        parts.append(turn_frame_steps(x_raw, mask, prev) / scale_m)
    if config.inputs.length_input:
        step = torch.where(mask[..., None], x_raw[..., :2], torch.zeros((), dtype=x_raw.dtype, device=x_raw.device))
        parts.append(torch.log1p(step.norm(dim=-1, keepdim=True)) / torch.log1p(scale_m))
    return torch.cat(parts, dim=-1)
