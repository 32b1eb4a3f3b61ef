"""Shared model fixtures of the tests."""

import torch


def as_trained(model):
    """A fresh adapter has γ = 0 and zero weights in the deformable attention's offset and attention-weight
    projections (ViT-Adapter's and Deformable DETR's init), so the injectors change nothing and the
    query LayerNorms get no gradient yet. Give them the non-zero values of a trained adapter."""
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for stage in model.adapter.stages:
            stage.injector.gamma.fill_(0.1)
            for read in [stage.injector.read, *(e.read for e in stage.extractors)]:
                for proj in (read.attn.sampling_offsets, read.attn.attention_weights):
                    proj.weight.copy_(0.01 * torch.randn(proj.weight.shape, generator=g))
    return model
