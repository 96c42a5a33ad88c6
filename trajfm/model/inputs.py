"""What ``TrajGPT.forward`` reads: ``ModelInputs`` (the points, their mask and the optional
inputs), and the token types and to-go width of infilling sequences (``infill.py`` builds them,
``gpt.py`` embeds them; both import them from here)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Token types of infilling sequences (``ModelInputs.types``; see infill.py): an ordinary point, the
# MASK standing for a hidden span, SEP before the answers, ANS on every answer point, NO_TIME on
# points whose time features are hidden (travel-time estimation).
TYPE_POINT, TYPE_MASK, TYPE_SEP, TYPE_ANS, TYPE_NO_TIME = range(5)
N_TOKEN_TYPES = 5
N_TO_GO = 3  # per answer token: the even-pace step to the far end (east, north) and the points left


@dataclass
class ModelInputs:
    """One batch for ``TrajGPT.forward``: raw (B, L, F) features and a (B, L) mask, and the inputs
    only some models or calls need.

    ``lonlat`` (B, L, 2) float64 degrees: needed only with ``space_encoding``; ``kind`` (B,) long
    mover kinds: only with ``n_kinds``; ``coords`` (B, L, 3) east m, north m, seconds from any
    origin: replaces the default running sums of the steps (st-rope and time2vec read it);
    ``types`` (B, L) long infilling token types (``TYPE_POINT`` .. ``TYPE_NO_TIME``) and
    ``to_go`` (B, L, N_TO_GO) what is left to the far end of the gap (``infill.to_go_features``;
    P = 1 only); ``norm`` (B, 2) the sequences' units with ``norm="context"``
    (``TrajGPT.context_scale``; default: computed from these points, required with a KV cache).
    """

    x_raw: torch.Tensor
    mask: torch.Tensor
    lonlat: torch.Tensor | None = None
    kind: torch.Tensor | None = None
    coords: torch.Tensor | None = None
    types: torch.Tensor | None = None
    to_go: torch.Tensor | None = None
    norm: torch.Tensor | None = None
