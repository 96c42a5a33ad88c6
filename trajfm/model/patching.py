"""Patching (TimesFM, Das et al. 2024) and the next-points objective for any patch sizes.

With ``patch_in = P``, points ``[iP, (i+1)P)`` form token i: their normalized features and
their mask bits are concatenated and a residual MLP maps them to one D-vector. A token is real
when its last point is real (then, padding being at the end, all its points before are real,
or it is a left-padded first patch). Token i predicts the ``patch_out = Q`` points that follow
it, ``(i+1)P .. (i+1)P + Q - 1``; Q > P lets a forecast take long strides (fewer, cheaper
autoregressive calls). P = Q = 1 is the plain next-point model: point i predicts point i+1.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualMLP(nn.Module):
    """TimesFM's residual block: ``Linear(SiLU(Linear(x))) + Linear(x)``."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.fc = nn.Linear(d_in, d_hidden, bias=bias)
        self.proj = nn.Linear(d_hidden, d_out, bias=bias)
        self.skip = nn.Linear(d_in, d_out, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.silu(self.fc(x)))) + self.skip(x)


def pad_to_patches(x: torch.Tensor, P: int) -> torch.Tensor:
    """(B, L, ...) padded at the end with zeros (False for a mask) up to a multiple of P points."""
    extra = (-x.shape[1]) % P
    if extra == 0:
        return x
    return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)


def patchify(x: torch.Tensor, mask: torch.Tensor, P: int) -> torch.Tensor:
    """(B, L, F) normalized features (0 at padding) and (B, L) mask -> (B, L/P, P*(F+1))."""
    B, L, F_ = x.shape
    z = torch.cat([x, mask[..., None].to(x.dtype)], dim=-1)  # (B, L, F+1): the MLP sees the gaps
    return z.reshape(B, L // P, P * (F_ + 1))


def token_mask(mask: torch.Tensor, P: int) -> torch.Tensor:
    """(B, L/P) bool: a token is real when its last point is."""
    return mask[:, P - 1 :: P]


def next_points(target: torch.Tensor, mask: torch.Tensor, P: int, Q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What each token predicts: (B, Lt, Q, T) targets and (B, Lt, Q) validity.

    ``target`` (B, L, T) per point (L a multiple of P), ``mask`` (B, L). Output q of token i is
    point (i+1)P + q; it counts only where the token and that point are real and inside L.
    """
    B, L, T = target.shape
    Lt = L // P
    idx = (torch.arange(Lt, device=target.device)[:, None] + 1) * P + torch.arange(Q, device=target.device)  # (Lt, Q)
    inside = idx < L
    idx = idx.clamp(max=L - 1)
    tgt = target[:, idx.flatten()].view(B, Lt, Q, T)
    valid = inside & mask[:, idx.flatten()].view(B, Lt, Q) & token_mask(mask, P)[..., None]
    return tgt, valid


def last_points(x: torch.Tensor, n_real: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last ``keep[b]`` of the first ``n_real[b]`` points of each row, left-aligned.

    ``x`` (B, L, ...); returns (B, max(keep), ...) and its (B, max(keep)) mask. Where
    ``keep[b] > n_real[b]`` the row starts with ``keep - n_real`` padded points (a patch that
    must end at the last real point but has fewer points than P).
    """
    width = int(keep.max())
    start = n_real - keep  # (B,), negative when left-padded
    idx = start[:, None] + torch.arange(width, device=x.device)[None, :]  # (B, width)
    valid = (idx >= 0) & (idx < n_real[:, None]) & (torch.arange(width, device=x.device)[None, :] < keep[:, None])
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    out = x[rows, idx.clamp(0, x.shape[1] - 1)]
    return out, valid
