"""Where a token is: learned absolute positions (GPT-2), rotary over the sequence index (RoPE),
or spatio-temporal rotary (TrajFM's idea) over metres and seconds.

Learned absolute positions are GPT-2's ``wpe`` table, added to the token embeddings in
``TrajGPT.backbone``; nothing else is needed here for them.

Rotary positions rotate queries and keys instead. A head's Dh channels form Dh/2 pairs (channel
j with channel j + Dh/2, the GPT-NeoX layout); pair j of a query or key at position p turns by the
angle ``theta_j(p)``. A score ``q_m . k_n`` then depends only on ``theta(p_m) - theta(p_n)``:

- ``rope``: p is the token index and ``theta_j = p * rope_base**(-2j/Dh)``, so scores depend on
  ``m - n`` only: shifting every index by the same amount changes no score.
- ``st-rope``: p is the token's (east_m, north_m, elapsed_s) from ``point_coords``. A third of the
  pairs turn with east, a third with north, a third with time, ``theta = 2 pi * coordinate /
  wavelength``, wavelengths geometric between ``st_rope_min_*`` and ``st_rope_max_*`` (leftover
  pairs do not turn). Scores depend on the displacement in metres and the time between two
  points, never on where or when the trajectory is: region-agnostic attention.

Angles are computed in float64 (positions of tens of kilometres against 10 m wavelengths), their
cosines and sines are float32, and the rotation runs in float32 even under bf16 autocast.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from trajfm.model.config import GPTConfig

LOG_DT = 2  # column of log1p(seconds since the previous point) in the raw features


def point_coords(x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, 3) float64 east metres, north metres, elapsed seconds of each point.

    Running sums of the raw steps (dx_m, dy_m, expm1(log_dt_s)) from the sequence start; steps at
    padding count as 0, so padded garbage or NaN never reaches a real point. The origin is
    arbitrary: st-rope only ever looks at differences.
    """
    step = x_raw[..., :3].double()  # (B, L, 3): dx_m, dy_m, log1p(dt_s)
    step = torch.cat([step[..., :2], torch.expm1(step[..., 2:].clamp(0.0, 20.0))], dim=-1)
    step = torch.where(mask[..., None], step, torch.zeros((), dtype=step.dtype, device=step.device))
    return step.cumsum(dim=1)


class Rotary(nn.Module):
    """Cosines and sines of the rotation angles, for ``rope`` or ``st-rope`` (no parameters)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.kind = config.positions.position
        half = config.head_dim // 2
        if self.kind == "rope":
            inv = config.positions.rope_base ** (-torch.arange(half, dtype=torch.float64) / half)  # radians per token
            self.axis = None
        else:  # st-rope: pairs [0, n) east, [n, 2n) north, [2n, 3n) time, the rest unrotated
            n = half // 3
            m = torch.tensor([config.positions.st_rope_min_m, config.positions.st_rope_max_m], dtype=torch.float64)
            s = torch.tensor([config.positions.st_rope_min_s, config.positions.st_rope_max_s], dtype=torch.float64)
            per_m = 2 * math.pi / _geomspace(m[0], m[1], n)  # radians per metre
            per_s = 2 * math.pi / _geomspace(s[0], s[1], n)  # radians per second
            inv = torch.cat([per_m, per_m, per_s, torch.zeros(half - 3 * n, dtype=torch.float64)])
            self.axis = torch.cat([torch.arange(3).repeat_interleave(n), torch.zeros(half - 3 * n, dtype=torch.long)])
        self.inv = inv  # (half,) float64; a plain attribute, so no dtype cast ever touches it

    def forward(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pos``: (B, L) token index (rope) or (B, L, 3) coordinates (st-rope).

        Returns cos, sin, each (B, 1, L, Dh/2) float32, to broadcast over heads.
        """
        inv = self.inv.to(pos.device)
        if self.axis is None:
            angle = pos.double()[..., None] * inv  # (B, L, half)
        else:
            angle = pos.double()[..., self.axis.to(pos.device)] * inv  # (B, L, half)
        return angle.cos()[:, None].float(), angle.sin()[:, None].float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, Dh) queries or keys: pair (j, j + Dh/2) turns by its angle.

    Computed in float32 and returned in ``x``'s dtype (bf16 under autocast)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


def _geomspace(lo: torch.Tensor, hi: torch.Tensor, n: int) -> torch.Tensor:
    if n == 1:
        return lo.reshape(1)
    return torch.exp(torch.linspace(float(torch.log(lo)), float(torch.log(hi)), n, dtype=torch.float64))
