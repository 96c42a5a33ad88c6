"""TrajGPT: GPT-2 over trajectory points, predicting the next point's (dx_m, dy_m, log_dt_s).

Read top to bottom, as nanoGPT's ``model.py``: attention, MLP, block, then the model. Shapes:
B batch, L points, Lt tokens (= L / patch_in; = L by default), F raw features, D = d_model,
H heads, Dh = D / H, T targets, Q = patch_out points predicted per token, W numbers per
predicted point (``heads.output_width``: T for the MSE head).

The model takes RAW features (metres, log1p seconds, cycles) and normalizes inside with buffers
saved in its state_dict, and ``predict``/``predict_next`` return raw units again: nothing
outside the model ever sees normalized numbers, so they cannot be mistaken for metres or degrees.

Padding (``mask`` False) is zeroed before the input projection and masked out of attention as a
key, so padded points never change the outputs at real points, whatever values they hold.

Submodule names follow GPT-2 (``transformer.wpe``, ``transformer.h.{i}.ln_1``, ``.attn.c_attn``,
``.attn.c_proj``, ``.ln_2``, ``.mlp.c_fc``, ``.mlp.c_proj``, ``transformer.ln_f``), so
``model.transformer`` holds the keys of ``transformers.GPT2Model`` minus ``wte`` (GPT-2's
``Conv1D`` weights are stored (in, out): transpose them into our ``nn.Linear`` (out, in)), and
``backbone`` computes what ``GPT2Model(inputs_embeds=...)`` computes (tests/test_gpt2_equivalence.py).
The token embedding is replaced by ``in_proj`` (features -> D; a residual MLP over a patch when
``patch_in > 1``) and the LM head by ``head`` (D -> Q * W). GELU uses the tanh approximation,
GPT-2's ``gelu_new``; LayerNorm eps is 1e-5, GPT-2's ``layer_norm_epsilon``.

Which idea lives where: positions (learned / rope / st-rope) in ``positions.py``, extra input
encodings (Time2Vec, Space2Vec-like, mover kind, steps in the frame of the previous step) in
``embeddings.py``, patching in ``patching.py``, the frame of the targets (constant-velocity
anchor, heading frame) in ``targets.py``, the MSE / Huber / distance and Gaussian-mixture heads
in ``heads.py``, masked-span infilling (MASK / SEP / ANS tokens, recovery, travel time) in
``infill.py``, KV-cache generation in ``generate.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trajfm.model import heads, targets
from trajfm.model.config import GPTConfig
from trajfm.model.embeddings import SpaceEncoding, Time2Vec, extra_inputs, time_scalars
from trajfm.model.infill import infill_loss
from trajfm.model.inputs import N_TO_GO, N_TOKEN_TYPES, TYPE_MASK, TYPE_POINT, TYPE_SEP, ModelInputs
from trajfm.model.patching import ResidualMLP, last_points, next_points, pad_to_patches, patchify, token_mask
from trajfm.model.positions import Rotary, apply_rotary, point_coords


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, rotary=None, kv=None) -> torch.Tensor:
        """``attn_mask`` (B, 1, L, S) bool, True where a query may attend a key (S = L, or the
        cache's capacity with ``kv``); ``rotary`` (cos, sin) each (B, 1, L, Dh/2) or None;
        ``kv`` a ``generate.LayerKV`` that stores this call's keys/values and returns all of them."""
        B, L, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        q = q.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)  # (B, H, L, Dh)
        k = k.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)
        v = v.view(B, L, self.n_head, D // self.n_head).transpose(1, 2)
        if rotary is not None:  # rotate before caching: a key's angle depends on its own position only
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if kv is not None:
            k, v = kv.update(k, v)  # (B, H, S, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, L, Dh)
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

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor, rotary=None, kv=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, rotary, kv)
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


def augment_steps(x_raw: torch.Tensor, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, L, F) raw windows with each window's (dx_m, dy_m) turned by its own random angle
    (``how="rotate"``), and mirrored (dy negated first) for a random half of the windows with
    ``"rotate-flip"``. Step lengths, times and calendar features are unchanged, so every turned
    window is a motion that could have happened; padding (zeros) stays zero. Draws come from
    ``generator`` or the global CPU RNG (checkpointed with the training state).
    """
    B = x_raw.shape[0]
    u = torch.rand(B, 2, generator=generator, dtype=torch.float64)  # (B, 2) on CPU: device-independent draws
    angle = (2.0 * math.pi * u[:, 0]).to(x_raw.device)  # (B,)
    sign = torch.ones(B, dtype=torch.float64, device=x_raw.device)
    if how == "rotate-flip":
        sign = torch.where(u[:, 1].to(x_raw.device) < 0.5, -sign, sign)
    cos, sin = torch.cos(angle)[:, None].to(x_raw.dtype), torch.sin(angle)[:, None].to(x_raw.dtype)  # (B, 1)
    dx, dy = x_raw[..., 0], x_raw[..., 1] * sign[:, None].to(x_raw.dtype)  # (B, L) each
    turned = torch.stack([cos * dx - sin * dy, sin * dx + cos * dy], dim=-1)  # (B, L, 2)
    return torch.cat([turned, x_raw[..., 2:]], dim=-1)


_UNIT = object()  # decode's marker: the outputs are already in the sequence's units


class TrajGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        c = config
        # Normalization of the raw inputs; targets use the first n_targets entries.
        self.register_buffer("feat_mean", torch.zeros(c.n_features))
        self.register_buffer("feat_std", torch.ones(c.n_features))
        if c.normalisation.norm == "context":  # metres of one unit of the training steps (rms of their east/north stds)
            self.register_buffer("step_unit_m", torch.ones(()))
        if c.patching.patch_in == 1:
            self.in_proj = nn.Linear(c.n_inputs, c.d_model, bias=c.bias)  # replaces wte
        else:  # TimesFM: P points (features + mask bit) -> one token
            self.in_proj = ResidualMLP(c.patching.patch_in * (c.n_inputs + 1), c.d_model, c.d_model, c.bias, c.dropout)
        if c.inputs.time_encoding == "time2vec":
            self.time2vec = Time2Vec(2, c.inputs.time2vec_dim)
            self.time_proj = nn.Linear(2 * c.inputs.time2vec_dim, c.d_model, bias=False)
        if c.inputs.space_encoding == "sinusoidal":
            self.space_enc = SpaceEncoding(c)
            self.space_proj = nn.Linear(self.space_enc.width, c.d_model, bias=False)
        if c.inputs.n_kinds > 0:
            self.kind_emb = nn.Embedding(c.inputs.n_kinds, c.d_model)
        trunk = dict(
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([Block(c) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.d_model, bias=c.bias),
        )
        if c.positions.position == "learned":
            trunk = dict(wpe=nn.Embedding(c.n_tokens, c.d_model), **trunk)  # learned absolute positions
        self.transformer = nn.ModuleDict(trunk)
        self.rotary = Rotary(c) if c.positions.position != "learned" else None
        self.head = nn.Linear(c.d_model, c.patching.patch_out * heads.output_width(c), bias=c.bias)
        if c.infilling.objective != "next":  # infilling (infill.py): MASK / SEP / ANS / NO_TIME vectors, the way to go
            self.special = nn.Embedding(N_TOKEN_TYPES, c.d_model)
            self.to_go_proj = nn.Linear(N_TO_GO, c.d_model, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

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

    @property
    def needs_lonlat(self) -> bool:
        """True when inputs must include absolute (lon, lat) degrees per point."""
        return self.config.inputs.space_encoding != "none"

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
        if self.config.normalisation.norm == "context":  # the steps are in each sequence's own units (context_scale)
            self.step_unit_m.copy_(std[:2].square().mean().sqrt())
            mean[:3], std[:3] = 0.0, 1.0
        self.feat_mean.copy_(mean)
        self.feat_std.copy_(std)

    def context_scale(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 2) per-sequence units for ``norm="context"`` (TimesFM normalizes each context by
        its first patch): metres per unit = mean step length over real points 1..norm_points +
        ``norm_floor_m``, and the mean ``log_dt_s`` of those points (0 if none). A sequence of
        walkers at 10 s and one of vessels at 60 s then look alike when their paths do: only
        earlier points set the units, so nothing of the future leaks into them."""
        c = self.config
        K = min(c.normalisation.norm_points + 1, x_raw.shape[1])
        m = mask[:, 1:K].to(torch.bool)  # (B, K-1) point 0's step comes from before the sequence
        w = m.to(torch.float64)
        n = w.sum(1).clamp_min(1.0)
        step = x_raw[:, 1:K, :2].double().norm(dim=-1)  # (B, K-1) metres
        step = torch.where(m, step, torch.zeros((), dtype=step.dtype, device=step.device))  # padding may hold garbage
        ldt = torch.where(m, x_raw[:, 1:K, 2].double(), torch.zeros((), dtype=torch.float64, device=step.device))
        unit = step.sum(1) / n + c.normalisation.norm_floor_m
        shift = ldt.sum(1) / n
        return torch.stack([unit, shift], dim=-1).to(x_raw.dtype)  # (B, 2)

    @staticmethod
    def scale_steps(x: torch.Tensor, norm: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """(B, ..., >=3) raw (dx_m, dy_m, log_dt_s, ...) -> the same in a sequence's units
        ``norm`` (B, 2) from ``context_scale`` (``inverse``: back to metres and log seconds)."""
        shape = (norm.shape[0],) + (1,) * (x.ndim - 2)
        unit, shift = norm[:, 0].reshape(shape).to(x.dtype), norm[:, 1].reshape(shape).to(x.dtype)
        if inverse:
            return torch.cat([x[..., :2] * unit[..., None], (x[..., 2] + shift)[..., None], x[..., 3:]], dim=-1)
        return torch.cat([x[..., :2] / unit[..., None], (x[..., 2] - shift)[..., None], x[..., 3:]], dim=-1)

    def normalize(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, F) normalized features, exactly 0 at padding (garbage or NaN there is dropped)."""
        x = (x_raw - self.feat_mean) / self.feat_std
        return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))

    # --- the forward pass: embed -> backbone -> head --------------------------------------

    def embed(
        self, x_raw, mask, coords=None, lonlat=None, kind=None, types=None, to_go=None, prev_step=None
    ) -> torch.Tensor:
        """(B, Lt, D) token embeddings, without positions. ``mask`` (B, L), L a multiple of P;
        ``coords`` (B, L, 3) from ``point_coords`` (needed for time2vec), ``lonlat`` (B, L, 2)
        degrees (needed for the space encoding), ``kind`` (B,) long mover kinds, ``types``
        (B, L) long infilling token types (``TYPE_POINT`` .. ``TYPE_NO_TIME``) and ``to_go``
        (B, L, N_TO_GO) what is left to the far end of the gap (``infill.to_go_features``),
        ``prev_step`` (B, 2) raw step before the first point (``turn_inputs`` with a KV cache)."""
        c, P = self.config, self.config.patching.patch_in
        x = self.normalize(x_raw, mask)  # (B, L, F)
        if c.n_inputs > c.n_features:  # turn_inputs / length_input: (B, L, n_inputs)
            scale_m = self.feat_std[:2].square().mean().sqrt()
            x = torch.cat([x, extra_inputs(c, x_raw, mask, scale_m, prev_step)], dim=-1)
        h = self.in_proj(x if P == 1 else patchify(x, mask, P))  # (B, Lt, D)
        if types is not None:
            h = self._add_token_types(h, types)
        if to_go is not None:
            h = h + self.to_go_proj(to_go)
        last = slice(P - 1, None, P)  # the point that closes each token
        real = mask[:, last, None]  # (B, Lt, 1): padded tokens get 0, never NaN (0 * NaN leaks through attention)
        if c.inputs.time_encoding == "time2vec":
            tau = time_scalars(x_raw[:, last], coords[:, last])  # (B, Lt, 2) hours
            h = h + self.time_proj(
                self.time2vec(torch.where(real, tau, torch.zeros((), dtype=tau.dtype, device=tau.device)))
            )
        if c.inputs.space_encoding == "sinusoidal":
            if lonlat is None:
                raise ValueError("this model encodes absolute position: pass lonlat (B, L, 2) degrees")
            ll = torch.where(real, lonlat[:, last].double(), torch.zeros((), dtype=torch.float64, device=h.device))
            h = h + self.space_proj(self.space_enc(ll))
        if c.inputs.n_kinds > 0:
            kinds = torch.zeros(h.shape[0], dtype=torch.long, device=h.device) if kind is None else kind
            h = h + self.kind_emb(kinds)[:, None, :]
        return h

    def _add_token_types(self, h: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """MASK and SEP tokens ARE their learned vector; ANS and NO_TIME points get theirs added."""
        if not hasattr(self, "special"):
            raise ValueError("this model was not built for infilling (objective 'next'): it has no MASK/SEP tokens")
        vec = self.special(types)  # (B, L, D)
        marker = ((types == TYPE_MASK) | (types == TYPE_SEP))[..., None]
        flagged = (types != TYPE_POINT)[..., None]
        return torch.where(marker, vec, h + torch.where(flagged, vec, torch.zeros_like(vec)))

    def backbone(self, h: torch.Tensor, tmask: torch.Tensor, index=None, tok_coords=None, cache=None) -> torch.Tensor:
        """GPT-2's trunk: (B, Lt, D) token embeddings -> (B, Lt, D) final hidden states.

        ``tmask`` (B, Lt) real tokens; ``index`` (B or 1, Lt) token positions (default 0..Lt-1);
        ``tok_coords`` (B, Lt, 3) st-rope coordinates; ``cache`` a ``generate.KVCache`` that
        these tokens are appended to (their positions then continue the cached ones).
        """
        c = self.config
        Lt = h.shape[1]
        if cache is not None:
            index = cache.begin(Lt)  # (B, Lt) the slots these tokens take
            attn_mask = cache.attention_mask(tmask)  # (B, 1, Lt, capacity)
        else:
            attn_mask = attention_mask(tmask)  # (B, 1, Lt, Lt)
        if index is None:
            index = torch.arange(Lt, device=h.device)[None, :]  # (1, Lt)
        if c.positions.position == "learned":
            h = h + self.transformer.wpe(index)
            rotary = None
        else:
            rotary = self.rotary(index if c.positions.position == "rope" else tok_coords)
        h = self.transformer.drop(h)
        for i, block in enumerate(self.transformer.h):
            h = block(h, attn_mask, rotary, cache.layer(i) if cache is not None else None)
        return self.transformer.ln_f(h)

    def forward(self, inputs: ModelInputs, cache=None) -> torch.Tensor:
        """(B, Lt, Q*W) normalized head outputs from ``inputs`` (raw (B, L, F) features, a (B, L)
        mask and the optional inputs some models need: ``inputs.ModelInputs``).

        By default (one point per token, MSE head) that is (B, L, T): the normalized prediction
        of the NEXT point's targets at every point. With ``cache`` (a ``generate.KVCache``), these
        points continue the cached sequences (see ``Rollout``). L is padded up to whole patches.
        With ``norm="context"`` the steps are first put in the sequence's own units:
        ``inputs.norm`` from ``context_scale`` (default: computed from these points; required with
        a cache, whose calls see only the new points).
        """
        if not isinstance(inputs, ModelInputs):
            raise TypeError(f"TrajGPT.forward takes a ModelInputs (trajfm.model.inputs), got {type(inputs).__name__}")
        c, P = self.config, self.config.patching.patch_in
        x_raw, mask, lonlat, coords, norm = inputs.x_raw, inputs.mask, inputs.lonlat, inputs.coords, inputs.norm
        if c.normalisation.norm == "context":
            if norm is None:
                if cache is not None:
                    raise ValueError(
                        "norm 'context' with a KV cache: pass the sequences' norm (context_scale of the prefill)"
                    )
                norm = self.context_scale(x_raw, mask.to(torch.bool))
            x_raw = self.scale_steps(x_raw, norm)
        x_raw, mask = pad_to_patches(x_raw, P), pad_to_patches(mask.to(torch.bool), P)
        lonlat = None if lonlat is None else pad_to_patches(lonlat, P)
        coords = None if coords is None else pad_to_patches(coords, P)
        if x_raw.shape[1] // P > c.n_tokens:
            raise ValueError(f"sequence of {x_raw.shape[1]} points is longer than block_size {c.block_size}")
        if coords is None and (c.positions.position == "st-rope" or c.inputs.time_encoding != "none"):
            coords = point_coords(x_raw, mask)  # (B, L, 3) float64
            if cache is not None:
                coords = coords + cache.last_coords[:, None, :]  # continue from the cached points
        prev_step = cache.last_step if cache is not None else None
        h = self.embed(x_raw, mask, coords, lonlat, inputs.kind, inputs.types, inputs.to_go, prev_step)  # (B, Lt, D)
        tmask = token_mask(mask, P)  # (B, Lt)
        tok_coords = coords[:, P - 1 :: P] if coords is not None else None
        out = self.head(self.backbone(h, tmask, tok_coords=tok_coords, cache=cache))
        if cache is not None:
            cache.advance(tmask, tok_coords, x_raw[..., :2])
        return out

    def loss(self, x_raw: torch.Tensor, mask: torch.Tensor, lonlat=None, kind=None, generator=None) -> torch.Tensor:
        """The training loss of ``config.infilling.objective`` on raw windows (B, L, F), masks (B, L) prefixes.

        "next": ``next_loss``; "infill": ``infill.infill_loss`` (spans drawn from ``generator``,
        else from the global RNG in training mode (checkpointed with the training state) and
        from a fixed seed in eval mode, so validation losses are comparable); "mixed": their sum,
        the infill part weighted by ``infill_weight``. In training mode with ``config.inputs.augment``
        each window's steps are first turned (and mirrored) by ``augment_steps``.
        """
        c = self.config
        if c.inputs.augment != "none" and self.training:
            x_raw = augment_steps(x_raw, c.inputs.augment, generator)
        if c.infilling.objective == "next":
            return self.next_loss(x_raw, mask, lonlat, kind)
        fill = infill_loss(self, x_raw, mask, lonlat, kind, generator)
        if c.infilling.objective == "infill":
            return fill
        return self.next_loss(x_raw, mask, lonlat, kind) + c.infilling.infill_weight * fill

    def next_loss(self, x_raw: torch.Tensor, mask: torch.Tensor, lonlat=None, kind=None) -> torch.Tensor:
        """Next-point loss in normalized units: MSE / Huber (per target value) or mixture NLL (per point).

        Token i is scored on points (i+1)P .. (i+1)P+Q-1 (point i+1 by default); only pairs where
        the token and the target point are real count; a batch with no pair gives 0. Targets
        are in the head's frame (``targets.py``: relative to the current step with an anchor).
        """
        c, P, Q = self.config, self.config.patching.patch_in, self.config.patching.patch_out
        mask = mask.to(torch.bool)
        norm = weight = None
        if c.normalisation.norm == "context":  # targets in the sequence's units too; forward must not rescale again
            units = self.context_scale(x_raw, mask)  # (B, 2)
            x_raw = self.scale_steps(x_raw, units)
            norm = torch.tensor([1.0, 0.0], dtype=x_raw.dtype, device=x_raw.device).expand(x_raw.shape[0], 2)
            if (
                c.normalisation.norm_loss == "metres" and c.output.head == "mse"
            ):  # (a mixture's NLL only shifts by log(unit) per sequence)
                weight = units[:, 0] / self.step_unit_m  # (B,) each sequence's unit in training-step units
        out = self(ModelInputs(x_raw, mask, lonlat, kind, norm=norm))  # (B, Lt, Q*W)
        x_raw, mask = pad_to_patches(x_raw, P), pad_to_patches(mask, P)
        if targets.is_plain(c):
            target, valid = next_points(self.normalize(x_raw, mask)[..., : c.n_targets], mask, P, Q)  # (B, Lt, Q, T)
        else:
            raw = torch.where(mask[..., None], x_raw, torch.zeros((), dtype=x_raw.dtype, device=x_raw.device))
            target, valid = next_points(raw[..., : c.n_targets], mask, P, Q)  # (B, Lt, Q, T) raw
            cur = raw[:, P - 1 :: P, None, :]  # (B, Lt, 1, F): the point each token ends at
            target = targets.encode(c, target, cur, self.feat_mean, self.feat_std)
        out = out.unflatten(-1, (Q, -1))  # (B, Lt, Q, W)
        if weight is not None:  # errors in metres (over the training steps' scale), as FDE counts them
            w = torch.ones(c.n_targets, dtype=out.dtype, device=out.device).expand(len(weight), c.n_targets).clone()
            w[:, :2] = weight[:, None]
            out, target = out * w[:, None, None, :], target * w[:, None, None, :]
        if c.first_scored_token:
            valid = valid & (torch.arange(valid.shape[1], device=valid.device) >= c.first_scored_token)[None, :, None]
        return heads.head_loss(c, out, target, valid)

    # --- predictions in raw units ----------------------------------------------------------

    def decode(
        self, out: torch.Tensor, how: str = "mode", temperature: float = 1.0, generator=None, cur=None, norm=None
    ) -> torch.Tensor:
        """(..., Q*W) head outputs -> (..., Q, T) raw (dx_m, dy_m, log_dt_s).

        ``how``: "mode" (MSE point, or mean of the most likely mixture component), "mean"
        (mixture mean), or "sample" (a draw at ``temperature``, with ``generator``). ``cur``
        (..., F) raw features of the point each output was made at: needed when the model
        predicts relative to the current step (``anchor`` / ``frame``, see ``targets.py``).
        ``norm`` (B, 2) the sequences' units (``context_scale``; needed with ``norm="context"``,
        ``out`` then has B rows).
        """
        c = self.config
        if c.normalisation.norm == "context" and norm is not _UNIT:
            if norm is None:
                raise ValueError(
                    "this model works in each sequence's own units: pass norm (context_scale of its context)"
                )
            cur = None if cur is None else self.scale_steps(cur, norm)
            return self.scale_steps(self.decode(out, how, temperature, generator, cur, _UNIT), norm, inverse=True)
        out = out.unflatten(-1, (c.patching.patch_out, -1))  # (..., Q, W)
        if how == "sample":
            p = heads.sample(c, out, temperature, generator)
        else:
            p = heads.point_estimate(c, out, how)  # (..., Q, T)
        if targets.is_plain(c):
            T = c.n_targets
            return p * self.feat_std[:T] + self.feat_mean[:T]
        return targets.decode(c, p, None if cur is None else cur[..., None, :], self.feat_mean, self.feat_std)

    @torch.no_grad()
    def predict(self, x_raw, mask, how: str = "mode", temperature: float = 1.0, generator=None, lonlat=None, kind=None):
        """(B, Q, T) raw predictions of the Q points after each sequence's last real point.

        Masks must be prefixes (padding at the end). With patches, a row keeps its last
        ``P * floor(n / P)`` points (or one left-padded patch if n < P), so its last token ends
        at its last real point. A row without any real point gets a finite, meaningless answer.
        """
        mask = mask.to(torch.bool)
        P = self.config.patching.patch_in
        norm = (
            self.context_scale(x_raw, mask) if self.config.normalisation.norm == "context" else None
        )  # from the whole context
        if P > 1:
            n = mask.sum(1)
            keep = torch.where(n >= P, (n // P) * P, torch.full_like(n, P))
            x_raw, mask = last_points(x_raw, n, keep)
            if lonlat is not None:
                lonlat, _ = last_points(lonlat, n, keep)
        out = self(ModelInputs(x_raw, mask, lonlat, kind, norm=norm))  # (B, Lt, Q*W)
        tmask = token_mask(mask, P)  # every width here is a whole number of patches
        idx = torch.arange(tmask.shape[1], device=mask.device)
        last = torch.where(tmask, idx, -1).max(dim=1).values.clamp_min(0)  # (B,)
        rows = torch.arange(out.shape[0], device=out.device)
        cur = x_raw[rows, (last + 1) * P - 1]  # (B, F) the point the last token ends at
        return self.decode(out[rows, last], how, temperature, generator, cur, norm)

    @torch.no_grad()
    def predict_next(self, x_raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T) raw prediction (dx_m, dy_m, log_dt_s) after each sequence's last real point.

        A row without any real point gets the prediction at position 0 (finite, meaningless).
        """
        return self.predict(x_raw, mask)[:, 0]
