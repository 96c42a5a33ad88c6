"""What the head's numbers mean: the next point's (dx_m, dy_m, log_dt_s), in a chosen frame.

The head predicts the targets of the next point(s) in NORMALIZED units. By default (the
tutorial's choice) that is simply ``(target - mean) / std``. Two options change the frame of the
displacement (dx, dy) only; ``log_dt_s`` is always ``(target - mean) / std``:

- ``anchor="velocity"``: the head predicts the CHANGE from the current step (the displacement
  of the point the token ends at), so an output of 0 is the constant-velocity forecast and the
  network only learns corrections (turns, speed changes, stops):
  ``dxy = cur_dxy + std_xy * out_xy``.
- ``frame="heading"``: (dx, dy) are expressed along and across the current heading (the
  direction of the current step; north when the step is shorter than ``HEADING_MIN_M``), in
  units of one isotropic scale ``s = rms(std_x, std_y)`` so rotation keeps distances:
  ``dxy = base + R(heading) @ (s * out_xy)``, with ``base`` the current step when anchored
  and 0 otherwise. A turn to port is then the same number wherever the vessel points.

``encode`` maps raw targets to head units (for the loss: the frame is applied to the TARGETS,
so the Gaussian-mixture NLL stays diagonal in the frame the head speaks), ``decode`` maps head
units back to raw metres / log seconds (after sampling or taking a point estimate).
"""

from __future__ import annotations

import torch

from trajfm.model.config import GPTConfig

HEADING_MIN_M = 1.0  # a step shorter than this has no heading (north is used)


def is_plain(config: GPTConfig) -> bool:
    """True for the original targets, ``(target - mean) / std`` (no anchor, east/north frame)."""
    return config.target.anchor == "none" and config.target.frame == "absolute" and config.target.step_scale == "std"


def heading_basis(step_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vector (ux, uy) of each (..., 2) east/north step in metres; (0, 1) if no heading."""
    norm = step_xy.norm(dim=-1)
    moving = norm >= HEADING_MIN_M
    safe = torch.where(moving, norm, torch.ones_like(norm))
    ux = torch.where(moving, step_xy[..., 0] / safe, torch.zeros_like(norm))
    uy = torch.where(moving, step_xy[..., 1] / safe, torch.ones_like(norm))
    return ux, uy


def _units(config: GPTConfig, cur: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(..., 2) metres per head unit of (dx, dy): the stds (east/north frame), their rms (heading
    frame: rotation keeps distances), or with ``step_scale="speed"`` the current step's length
    plus ``step_scale_floor_m`` (a moored vessel's forecast is then exact to decimetres, a fast
    one's in units of its own step)."""
    if config.target.step_scale == "speed":
        return (cur[..., :2].norm(dim=-1, keepdim=True) + config.target.step_scale_floor_m).expand(*cur.shape[:-1], 2)
    if config.target.frame == "heading":
        return std[:2].square().mean().sqrt().expand(2)
    return std[:2]


def encode(
    config: GPTConfig, target: torch.Tensor, cur: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """(..., T) raw targets -> head units. ``cur`` (..., >=2) raw features of the current point
    (the point whose token predicts ``target``; broadcast over extra target axes)."""
    T = target.shape[-1]
    plain = (target - mean[:T]) / std[:T]
    if is_plain(config):
        return plain
    base = cur[..., :2] if config.target.anchor == "velocity" else torch.zeros_like(cur[..., :2])
    d = target[..., :2] - base  # metres east/north, relative to the anchor
    if config.target.frame == "heading":
        ux, uy = heading_basis(cur[..., :2])
        d = torch.stack([d[..., 0] * ux + d[..., 1] * uy, -d[..., 0] * uy + d[..., 1] * ux], dim=-1)  # along, left
    return torch.cat([d / _units(config, cur, std), plain[..., 2:]], dim=-1)


def decode(
    config: GPTConfig, pred: torch.Tensor, cur: torch.Tensor | None, mean: torch.Tensor, std: torch.Tensor
) -> torch.Tensor:
    """(..., T) head units -> raw (dx_m, dy_m, log_dt_s); the inverse of ``encode``."""
    T = pred.shape[-1]
    if is_plain(config):
        return pred * std[:T] + mean[:T]
    if cur is None:
        raise ValueError("this model predicts relative to the current step: pass the current point's raw features")
    rest = pred[..., 2:] * std[2:T] + mean[2:T]
    base = cur[..., :2] if config.target.anchor == "velocity" else torch.zeros_like(cur[..., :2])
    xy = pred[..., :2] * _units(config, cur, std)  # metres
    if config.target.frame == "heading":
        ux, uy = heading_basis(cur[..., :2])
        a, left = xy[..., 0], xy[..., 1]
        xy = torch.stack([a * ux - left * uy, a * uy + left * ux], dim=-1)
    return torch.cat([base + xy, rest], dim=-1)
