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


def test_tracker_embeddings_are_what_the_class_head_reads():
    """The query embeddings the tracker matches frames on are the last decoder layer's output after the decoder's
    LayerNorm (MinVIS): exactly the vectors Mask2Former's class head turns into the class logits."""
    model = _model().eval()
    with torch.no_grad():  # a trained norm's scale and shift (at initialisation they are 1 and 0, an identity here)
        norm = model.head.model.transformer_module.decoder.layernorm
        norm.weight.normal_(1.0, 0.5, generator=torch.Generator().manual_seed(3))
        norm.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
        out = model(torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(2)))
        reread = model.head.class_predictor(out.query_embeddings)
    torch.testing.assert_close(reread, out.class_logits)
