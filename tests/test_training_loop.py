"""The training loop's pieces: which frames of a chain carry which loss, and which parameters decay."""

import pytest
import torch

from prunebench.data.pipeline import ClipBatch
from prunebench.models.head_config import HeadConfig
from prunebench.models.vis_model import VISModel
from prunebench.models.vit import create_backbone
from prunebench.config import OptimConfig
from prunebench.training.loop import forward_chain, param_groups

SMALL_HEAD = HeadConfig(num_queries=4, hidden_dim=32, decoder_layers=1, pixel_decoder_layers=1, heads=2,
                        feedforward_dim=64, train_points=256)


def _chain(method: str, frames: int = 3):
    """``method``'s model on a chain of ``frames`` random 64x96 frames with one square object; every frame's
    output as the model returned it, and the chain's losses."""
    torch.manual_seed(0)
    model = VISModel(create_backbone("vit_tiny", method, {}), 3, SMALL_HEAD).train()
    mask = torch.zeros(1, 64, 96)
    mask[:, 16:48, 16:48] = 1
    batch = ClipBatch(torch.randn(1, frames, 3, 64, 96, generator=torch.Generator().manual_seed(1)),
                      [[(mask.clone(), torch.tensor([1]))] for _ in range(frames)])
    outputs = []
    model.register_forward_hook(lambda _module, _args, out: outputs.append(out))
    return outputs, forward_chain(model, batch, torch.device("cpu"))


def test_the_first_frame_of_a_vpp_chain_only_warms_up_its_state():
    """docs/methods.md §2.8: the first frame adds its sparsity loss, no task loss (its Map-SM keeps every token)."""
    outputs, chain = _chain("vpp")
    keep_block1 = [float(o.backbone.block_keep[1].detach().mean()) for o in outputs[:2]]
    assert keep_block1[0] == 1.0 > keep_block1[1]
    task = [o.task_loss.detach().item() for o in outputs]
    sparsity = [o.backbone.loss.detach().item() for o in outputs]
    assert chain.task.detach().item() == pytest.approx(sum(task[1:]) / len(task[1:]))
    assert chain.task.detach().item() != pytest.approx(sum(task) / len(task))
    assert chain.prune.detach().item() == pytest.approx(sum(sparsity) / len(sparsity))


def test_every_frame_of_a_stateless_methods_chain_carries_the_task_loss():
    outputs, chain = _chain("dynamicvit")
    assert chain.task.detach().item() == pytest.approx(sum(o.task_loss.detach().item() for o in outputs) / len(outputs))


def test_a_vpp_chain_without_a_second_frame_is_refused():
    with pytest.raises(ValueError, match="at least 2 frames"):
        _chain("vpp", frames=1)


def test_query_embeddings_norms_and_biases_get_no_weight_decay():
    model = VISModel(create_backbone("vit_tiny", "vpp", {}), 3, SMALL_HEAD)
    decay = {id(p) for g in param_groups(model, OptimConfig()) if g["weight_decay"] > 0 for p in g["params"]}
    names = {name for name, p in model.named_parameters() if id(p) in decay}
    queries = [n for n, _ in model.named_parameters() if "queries_" in n]
    assert queries and not set(queries) & names
    assert not any("norm" in n or n.endswith(".bias") or "pos_embed" in n for n in names)
    assert any(n.endswith("attn.qkv.weight") for n in names)  # matrices still decay
