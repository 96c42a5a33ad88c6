"""The backbone IS GPT-2: same random weights in, same numbers out as ``transformers.GPT2Model``.

``transformers`` is a test-only dependency and nothing is downloaded: the reference model is
built from a ``GPT2Config`` with random weights, which are copied into ``TrajGPT.transformer``
(GPT-2's ``Conv1D`` stores weights as (in, out): they are transposed into ``nn.Linear``).
Dropout is off, both models are in eval mode; GELU is ``gelu_new`` (tanh) and LayerNorm eps is
1e-5 on both sides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthetic_tracks import (
    make_windows,
    one_torch_thread,  # noqa: F401 (autouse fixture)
    stats_of,
)
from trajfm.model import GPTConfig, TrajGPT
from trajfm.model.inputs import ModelInputs

transformers = pytest.importorskip("transformers")

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def is_conv1d(name: str) -> bool:
    """``h.0.attn.c_attn.weight`` -> True: GPT-2 stores these (in, out)."""
    return name.endswith(".weight") and name.split(".", 2)[-1].rsplit(".", 1)[0] in CONV1D


def reference_pair(n_layer=3, n_head=4, d_model=64, block_size=32, seed=0, wpe_std=0.5):
    """(trajfm model, transformers GPT2Model) with GPT2Model's random weights copied into ours.

    GPT-2's init (std 0.02, unit gains, zero biases) keeps activations so small that GELU's tanh
    and erf forms agree to 1e-6; weights are redrawn at std 1/sqrt(fan_in), gains and biases
    perturbed, so every mismatch (activation, scaling, a transposed or swapped tensor) shows.
    """
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=d_model,
        n_positions=block_size,
        vocab_size=8,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    hf_config._attn_implementation = "eager"  # the textbook softmax(QK^T/sqrt(d))V reference
    hf = transformers.GPT2Model(hf_config).eval()
    ours = TrajGPT(
        GPTConfig(n_layer=n_layer, n_head=n_head, d_model=d_model, block_size=block_size, dropout=0.0)
    ).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name == "wpe.weight":
                p.normal_(0.0, wpe_std)
            elif p.dim() == 2:
                p.normal_(0.0, p.shape[0] ** -0.5)  # Conv1D (in, out): fan_in is dim 0
            elif name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
        hf_sd = hf.state_dict()
        for name, p in ours.transformer.state_dict().items():
            src = hf_sd[name].t() if is_conv1d(name) else hf_sd[name]
            assert p.shape == src.shape, name
            p.copy_(src)
    return ours, hf


def test_every_gpt2_weight_has_a_home():
    ours, hf = reference_pair(n_layer=2)
    assert set(ours.transformer.state_dict()) == set(hf.state_dict()) - {"wte.weight"}


@pytest.mark.parametrize(
    "shape,scale",
    [
        (dict(n_layer=3, n_head=4, d_model=64), 1.0),
        (dict(n_layer=2, n_head=3, d_model=48), 1.0),
        (dict(n_layer=2, n_head=4, d_model=64, wpe_std=3e-3), 3e-3),  # variance ~ eps: eps must match
    ],
)
def test_backbone_matches_gpt2model_on_inputs_embeds(shape, scale):
    ours, hf = reference_pair(**shape)
    torch.manual_seed(1)
    emb = torch.randn(3, 32, shape["d_model"]) * scale
    mask = torch.ones(3, 32, dtype=torch.bool)
    with torch.no_grad():
        ref = hf(inputs_embeds=emb).last_hidden_state
        out = ours.backbone(emb, mask)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_backbone_matches_gpt2model_with_padding():
    ours, hf = reference_pair()
    torch.manual_seed(2)
    emb = torch.randn(3, 32, 64)
    mask = torch.ones(3, 32, dtype=torch.bool)
    mask[1, 20:] = False
    mask[2, 5:] = False
    with torch.no_grad():
        ref = hf(inputs_embeds=emb, attention_mask=mask.long()).last_hidden_state
        out = ours.backbone(emb, mask)
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-5, atol=1e-5)


def test_whole_model_is_gpt2_between_its_input_projection_and_head():
    """On encoded synthetic tracks: TrajGPT(x) == head(GPT2Model(inputs_embeds=in_proj(normalize(x))))."""
    ours, hf = reference_pair(block_size=32)
    ws = make_windows(n_tracks=8, points=40, window=32, seed=4)  # 20 to 40 points: some padded
    st = stats_of(ws)
    ours.set_normalization(st["mean"], st["std"])
    x, mask = torch.from_numpy(ws.x), torch.from_numpy(ws.mask)
    assert (~mask).any()  # some windows are padded
    with torch.no_grad():
        emb = ours.in_proj(ours.normalize(x, mask))
        ref = ours.head(hf(inputs_embeds=emb, attention_mask=mask.long()).last_hidden_state)
        out = ours(ModelInputs(x, mask))
    torch.testing.assert_close(out[mask], ref[mask], rtol=1e-5, atol=1e-5)
    assert np.isfinite(out.numpy()).all()
