"""Local pretrained weights: a real timm ViT state dict loads into the backbone; a wrong file stops with one line."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from prunebench.errors import ConfigError
from prunebench.models.vit import create_backbone, load_timm_weights


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)  # with class token and head, as published
    path = tmp_path_factory.mktemp("weights") / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model.state_dict()


def test_timm_state_dict_loads_and_the_final_norm_is_applied(tiny_file):
    path, state = tiny_file
    backbone = create_backbone("vit_tiny")
    load_timm_weights(backbone, str(path))
    assert torch.equal(backbone.vit.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])
    assert torch.equal(backbone.vit.norm.weight, state["norm.weight"])  # the final LayerNorm is the one in use
    assert torch.equal(backbone.vit.pos_embed, state["pos_embed"][:, 1:])  # class token's entry dropped
    x = torch.randn(1, 3, 64, 96)
    tokens, _ = backbone.embed(x)
    for block in backbone.vit.blocks:
        tokens = block(tokens)
    expected = torch.nn.functional.layer_norm(tokens, (192,), state["norm.weight"], state["norm.bias"], eps=1e-6)
    out = backbone.eval()(x).features.flatten(2).transpose(1, 2)
    assert torch.allclose(out, expected, atol=1e-5)


def test_weights_of_another_size_stop_with_one_line(tiny_file):
    path, _ = tiny_file
    with pytest.raises(ConfigError, match="not a vit_small checkpoint .*size mismatch"):
        load_timm_weights(create_backbone("vit_small"), str(path))
    with pytest.raises(ConfigError, match="pretrained weights not found"):
        load_timm_weights(create_backbone("vit_tiny"), str(path) + ".missing")
