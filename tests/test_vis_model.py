"""The VIS model is fully initialised and deterministic; shapes of its outputs."""

import torch

from prunebench.models import create_backbone
from prunebench.models.vis_model import HeadConfig, VISModel


def _model(seed=0):
    torch.manual_seed(seed)
    return VISModel(create_backbone("vit_tiny", "dense"), 5, HeadConfig(num_queries=6))


def test_every_parameter_is_initialised():
    # the pixel decoder is rebuilt for the pyramid's channels; it must not keep uninitialised memory
    for name, param in _model().named_parameters():
        assert torch.isfinite(param).all() and param.abs().max() < 100, name


def test_same_seed_same_loss_and_shapes():
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    targets = [(torch.zeros(1, 64, 96).index_fill_(1, torch.arange(10, 30), 1.0), torch.tensor([2]))] * 2
    losses = []
    for _ in range(2):
        torch.manual_seed(5)
        out = _model().train()(images, targets=targets)
        losses.append(float(out.task_loss.detach()))
    assert losses[0] == losses[1]
    assert out.class_logits.shape == (2, 6, 6) and out.mask_logits.shape == (2, 6, 16, 24)
    assert out.query_embeddings.shape == (2, 6, 64)
