"""Output heads: what the final D-vector of a token says about each point it predicts.

``TrajGPT.head`` is one Linear from D to ``patch_out * output_width(config)``; this module reads
those numbers, all in NORMALIZED target units (the model denormalizes):

- ``mse``: the point itself, (dx, dy, log dt); loss = mean squared error (the tutorial's), or
  with ``point_loss="huber"`` the Huber loss per value (quadratic within ``huber_delta``
  normalized units, linear beyond: a GPS jump of 2 km no longer outweighs a hundred ordinary
  steps), or with ``"distance"`` the (pseudo-Huber smoothed) Euclidean length of the (dx, dy)
  error plus the |error| of log dt: the metres ADE counts, whose minimizer is the geometric
  median (a moored vessel that may leave is forecast to stay, not to drift half-way). With
  ``score_positions`` and Q > 1 the (dx, dy) errors are summed over the Q steps first, so the
  loss scores the positions reached, not each step.
- ``mixture``: a K-component Gaussian mixture with diagonal covariances over (dx, dy, log dt)
  (TrajGPT's probabilistic step): K logits, then per component T means and T log std.
  Loss = negative log-likelihood in nats per point. A point estimate is the mean of the most
  likely component (``"mode"``, deterministic) or the mixture mean (``"mean"``); sampling draws
  a component from ``softmax(logits / temperature)`` and a point with std scaled by
  ``sqrt(temperature)`` (temperature 0 = the deterministic mode).
- ``cell``: logits over where the next point's H3 cell lies relative to the current point's
  (``cells.py``). Its classes come from the points' positions, which ``head_loss`` is not
  given: train with ``cells.cell_loss``, rank and decode with ``cells.predict_cells``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trajfm.model.cells import n_cell_classes
from trajfm.model.config import GPTConfig

LOG_STD_MIN, LOG_STD_MAX = -7.0, 7.0  # keeps the NLL finite whatever the head outputs
POINT_ESTIMATES = ("mode", "mean")


def output_width(config: GPTConfig) -> int:
    """Numbers per predicted point: T (mse), K * (1 + 2T) (mixture) or the cell classes (cell)."""
    T = config.n_targets
    if config.output.head == "cell":
        return n_cell_classes(config.output.cell_radius)
    return T if config.output.head == "mse" else config.output.n_mixture * (1 + 2 * T)


def _not_cell(config: GPTConfig) -> None:
    if config.output.head == "cell":
        raise ValueError(
            "the cell head's classes come from positions: train with trajfm.model.cells.cell_loss "
            "and decode with trajfm.model.cells.predict_cells"
        )


def split_mixture(out: torch.Tensor, K: int, T: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., K(1+2T)) -> logits (..., K), means (..., K, T), log std (..., K, T)."""
    logits = out[..., :K]
    rest = out[..., K:].unflatten(-1, (K, 2 * T))
    return logits, rest[..., :T], rest[..., T:].clamp(LOG_STD_MIN, LOG_STD_MAX)


def mixture_nll(out: torch.Tensor, target: torch.Tensor, K: int) -> torch.Tensor:
    """(...,) negative log-likelihood of ``target`` (..., T) under the mixture ``out``."""
    T = target.shape[-1]
    logits, mean, log_std = split_mixture(out, K, T)
    z = (target[..., None, :] - mean) * torch.exp(-log_std)  # (..., K, T)
    log_prob = (-0.5 * z.square() - log_std).sum(-1) - 0.5 * T * math.log(2 * math.pi)  # (..., K)
    return -torch.logsumexp(F.log_softmax(logits, dim=-1) + log_prob, dim=-1)


def masked_mean(values: torch.Tensor, valid: torch.Tensor, per: int = 1) -> torch.Tensor:
    """Mean of ``values`` where ``valid`` (same leading shape), over ``valid.sum() * per`` items; 0 if none."""
    v = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return v.sum() / (valid.sum() * per).clamp_min(1)


def head_loss(config: GPTConfig, out: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scalar loss of head outputs (B, Lt, Q, W) against targets (B, Lt, Q, T) where ``valid``."""
    _not_cell(config)
    if config.output.head == "mse":
        err = out - target  # (B, Lt, Q, T)
        if config.output.score_positions:  # Q steps -> Q positions (valid is a prefix along Q)
            err = torch.cat([err[..., :2].cumsum(-2), err[..., 2:]], dim=-1)
        if config.output.point_loss == "distance":
            d = config.output.huber_delta
            return masked_mean(_smooth_norm(err[..., :2], d) + _smooth_norm(err[..., 2:], d), valid)
        if config.output.point_loss == "huber":
            err = F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=config.output.huber_delta)
        else:
            err = err.square()
        return masked_mean(err, valid[..., None], per=config.n_targets)
    return masked_mean(mixture_nll(out, target, config.output.n_mixture), valid)


def _smooth_norm(v: torch.Tensor, delta: float) -> torch.Tensor:
    """(...,) pseudo-Huber length of vectors (..., k): ~|v| beyond ``delta``, |v|^2 / (2 delta) within."""
    return torch.sqrt(v.square().sum(-1) + delta * delta) - delta


def point_estimate(config: GPTConfig, out: torch.Tensor, how: str = "mode") -> torch.Tensor:
    """(..., T) deterministic prediction from head outputs (..., W)."""
    if how not in POINT_ESTIMATES:
        raise ValueError(f"point estimate must be one of {POINT_ESTIMATES}, got {how!r}")
    _not_cell(config)
    if config.output.head == "mse":
        return out
    logits, mean, _ = split_mixture(out, config.output.n_mixture, config.n_targets)
    if how == "mean":
        return (logits.softmax(-1)[..., None] * mean).sum(-2)
    best = logits.argmax(-1, keepdim=True)[..., None].expand(*mean.shape[:-2], 1, mean.shape[-1])
    return mean.gather(-2, best).squeeze(-2)


def sample(config: GPTConfig, out: torch.Tensor, temperature: float = 1.0, generator=None) -> torch.Tensor:
    """(..., T) a random draw from head outputs (..., W); the point itself for an MSE head."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    _not_cell(config)
    if config.output.head == "mse" or temperature == 0:
        return point_estimate(config, out, "mode")
    logits, mean, log_std = split_mixture(out, config.output.n_mixture, config.n_targets)
    probs = (logits.float() / temperature).softmax(-1).reshape(-1, config.output.n_mixture)
    k = torch.multinomial(probs, 1, generator=generator).view(*logits.shape[:-1], 1, 1)  # (..., 1, 1)
    k = k.expand(*mean.shape[:-2], 1, mean.shape[-1])
    mu, log_sigma = mean.gather(-2, k).squeeze(-2), log_std.gather(-2, k).squeeze(-2)  # (..., T)
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(log_sigma) * math.sqrt(temperature)
