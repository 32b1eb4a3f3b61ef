"""The training loop's pieces: which frames of a chain carry which loss, which parameters decay, exact resumption."""

import io

import pytest
import torch

from platform_helpers import write_config
from prunebench.data.pipeline import ClipBatch
from prunebench.models.head_config import HeadConfig
from prunebench.models.vis_model import VISModel
from prunebench.models.vit import create_backbone
from prunebench.config import OptimConfig, load_config
from prunebench.training.loop import LoopState, forward_chain, param_groups, train_steps
from prunebench.training.protocol import prepare_stage

CPU = torch.device("cpu")
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


class _Stop(Exception):
    pass


def _finetune(tmp_path, method: str = "dynamicvit"):
    """A DynamicViT (Gumbel noise: torch's global generator) fine-tune of the tiny config, 8 steps: 2 epochs of 4."""
    config = load_config(write_config(tmp_path, method={"name": method}, finetune={"steps": 8}))
    return config, prepare_stage(config, "finetune")


def test_a_run_resumed_at_an_epoch_end_ends_with_the_weights_of_the_run_that_did_not_stop(tmp_path):
    config, prepared = _finetune(tmp_path)
    train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, CPU)
    uninterrupted = {k: v.clone() for k, v in prepared.model.state_dict().items()}

    config, prepared = _finetune(tmp_path)
    saved: dict = {}

    def stop_after_the_first_epoch(metrics, state: LoopState) -> None:
        if metrics.step == 4:
            buffer = io.BytesIO()  # what a Ray Train checkpoint writes and reads back
            torch.save(state.state_dict(), buffer)
            saved.update(weights={k: v.clone() for k, v in prepared.model.state_dict().items()}, state=buffer.getvalue())
            raise _Stop

    with pytest.raises(_Stop):
        train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, CPU, on_step=stop_after_the_first_epoch)
    assert any(not torch.equal(saved["weights"][k], uninterrupted[k]) for k in uninterrupted)

    config, prepared = _finetune(tmp_path)  # a new worker: rebuilt from the seed, then the checkpoint
    prepared.model.load_state_dict(saved["weights"])
    state = torch.load(io.BytesIO(saved["state"]), map_location="cpu", weights_only=True)
    train_steps(prepared.model, prepared.sampler, prepared.optim, config.seed, CPU, start_step=4, resume_state=state)
    resumed = prepared.model.state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
