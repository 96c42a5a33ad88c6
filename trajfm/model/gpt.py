"""TrajGPT: GPT-2 over trajectory points, predicting the next point's (dx_m, dy_m, log_dt_s).

Read top to bottom, as nanoGPT's ``model.py``: attention, MLP, block, then the model. Shapes:
B batch, L points (L <= block_size), F raw features, D = d_model, H heads, T targets.

The model takes RAW features (metres, log1p seconds, cycles) and normalizes inside with buffers
saved in its state_dict, and ``predict_next`` returns raw units again: nothing outside the model
ever sees normalized numbers, so they cannot be mistaken for metres or degrees.

Padding (``mask`` False) is zeroed before the input projection and masked out of attention as a
key, so padded points never change the outputs at real points, whatever values they hold.

Submodule names follow GPT-2 (``transformer.wpe``, ``transformer.h.{i}.ln_1``, ``.attn.c_attn``,
``.attn.c_proj``, ``.ln_2``, ``.mlp.c_fc``, ``.mlp.c_proj``, ``transformer.ln_f``), so
``model.transformer`` holds the keys of ``transformers.GPT2Model`` minus ``wte`` (GPT-2's
``Conv1D`` weights are stored (in, out): transpose them into our ``nn.Linear`` (out, in)). The
token embedding is replaced by ``in_proj`` (features -> D) and the LM head by ``head`` (D -> T).
GELU uses the tanh approximation, GPT-2's ``gelu_new``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trajfm.model.config import GPTConfig


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape  # attn_mask: (B, 1, L, L) bool, True where a query may attend a key
        q, k, v = self.c_attn(x).split(D, dim=2)
        q = q.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, L, D/H)
        k = k.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)
        v = v.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, D/H)
        y = y.transpose(1, 2).contiguous().view(B, L, D)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.d_model, 4 * config.d_model, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's gelu_new
        self.c_proj = nn.Linear(4 * config.d_model, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))  # (B, L, D)


class Block(nn.Module):
    """Pre-LayerNorm transformer block (GPT-2)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x  # (B, L, D)


def attention_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool from a (B, L) padding mask: causal, and never attend to padding.

    Every query may also attend to itself, so a padded query row is never fully masked (a fully
    masked softmax row is NaN); real queries only ever see real keys at or before them.
    """
    L = mask.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril()  # (L, L)
    self_key = torch.eye(L, dtype=torch.bool, device=mask.device)  # (L, L)
    return causal & (mask[:, None, None, :] | self_key)  # (B, 1, L, L)


class TrajGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # Normalization of the raw inputs; targets use the first n_targets entries.
        self.register_buffer("feat_mean", torch.zeros(config.n_features))
        self.register_buffer("feat_std", torch.ones(config.n_features))
        self.in_proj = nn.Linear(config.n_features, config.d_model, bias=config.bias)  # replaces wte
        self.transformer = nn.ModuleDict(
            dict(
                wpe=nn.Embedding(config.block_size, config.d_model),  # learned absolute positions
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.d_model, bias=config.bias),
            )
        )
        self.head = nn.Linear(config.d_model, config.n_targets, bias=config.bias)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def set_normalization(self, mean, std, min_std: float = 1e-6) -> None:
        """Set input statistics (raw units, length n_features); std below ``min_std`` -> 1."""
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64), dtype=torch.float32)
        std = torch.as_tensor(np.asarray(std, dtype=np.float64), dtype=torch.float32)
        n = self.config.n_features
        if mean.shape != (n,) or std.shape != (n,):
            raise ValueError(f"normalization needs {n} means and stds, got {tuple(mean.shape)}, {tuple(std.shape)}")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise ValueError("normalization statistics must be finite")
        std = torch.where(std.abs() < min_std, torch.ones_like(std), std.abs())
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std)

    def normalize(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, F) normalized features, exactly 0 at padding (garbage or NaN there is dropped)."""
        x = (x_raw - self.feat_mean) / self.feat_std
        return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))

    def forward(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, T) normalized predictions of the NEXT point's targets, from raw (B, L, F)."""
        B, L, _ = x_raw.shape
        if L > self.config.block_size:
            raise ValueError(f"sequence of {L} points is longer than block_size {self.config.block_size}")
        mask = mask.to(torch.bool)
        pos = torch.arange(L, device=x_raw.device)  # (L,)
        x = self.in_proj(self.normalize(x_raw, mask)) + self.transformer.wpe(pos)  # (B, L, D)
        x = self.transformer.drop(x)
        attn_mask = attention_mask(mask)  # (B, 1, L, L)
        for block in self.transformer.h:
            x = block(x, attn_mask)
        x = self.transformer.ln_f(x)
        return self.head(x)  # (B, L, T)

    def loss(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error (normalized units) of the prediction at point i against point i+1.

        Only pairs where both i and i+1 are real count; a batch with no pair gives 0.
        """
        mask = mask.to(torch.bool)
        T = self.config.n_targets
        pred = self(x_raw, mask)[:, :-1]  # (B, L-1, T)
        target = self.normalize(x_raw, mask)[:, 1:, :T]  # (B, L-1, T), 0 at padding
        pair = (mask[:, :-1] & mask[:, 1:])[..., None]  # (B, L-1, 1)
        sq = torch.where(pair, (pred - target) ** 2, torch.zeros((), dtype=pred.dtype, device=pred.device))
        return sq.sum() / (pair.sum() * T).clamp_min(1)

    @torch.no_grad()
    def predict_next(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) raw prediction (dx_m, dy_m, log_dt_s) after each sequence's last real point.

        A row without any real point gets the prediction at position 0 (finite, meaningless).
        """
        mask = mask.to(torch.bool)
        pred = self(x_raw, mask)  # (B, L, T)
        idx = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, idx, -1).max(dim=1).values.clamp_min(0)  # (B,)
        p = pred[torch.arange(pred.shape[0], device=pred.device), last]  # (B, T)
        T = self.config.n_targets
        return p * self.feat_std[:T] + self.feat_mean[:T]
