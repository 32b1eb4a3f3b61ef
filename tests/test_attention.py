"""The attention kernel choice: the math kernel only for short bf16 training passes on a CPU, the same
function on both kernels, and ``SplitBlock`` computing timm's block."""

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from prunebench.models.attention import MATH_BELOW_TOKENS, scaled_dot_product, uses_math_kernel
from prunebench.models.blocks import SplitBlock


def qkv(tokens: int, dtype: torch.dtype, grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(tokens)
    return [torch.randn(2, 3, tokens, 64, generator=g).to(dtype).requires_grad_(grad) for _ in range(3)]


@pytest.mark.parametrize(("tokens", "dtype", "grad", "math"), [
    (112, torch.bfloat16, True, True),
    (MATH_BELOW_TOKENS - 1, torch.bfloat16, True, True),
    (MATH_BELOW_TOKENS, torch.bfloat16, True, False),  # long sequences: the fused kernel is faster
    (112, torch.float32, True, False),  # float32: the fused kernel is faster
    (112, torch.bfloat16, False, False),  # no backward pass: the fused kernel is faster
])
def test_math_kernel_only_for_short_bf16_training_on_a_cpu(tokens, dtype, grad, math):
    assert uses_math_kernel(qkv(tokens, dtype, grad)[0]) is math


def test_no_math_kernel_under_inference_mode_or_no_grad():
    q = qkv(112, torch.bfloat16, True)[0]
    with torch.no_grad():
        assert not uses_math_kernel(q)


def test_both_kernels_compute_the_same_attention_and_gradients():
    """bf16 on the math kernel against bf16 on the fused kernel, both against a float64 reference."""
    q, k, v = qkv(112, torch.bfloat16, True)
    bias = torch.zeros(2, 1, 1, 112, dtype=torch.bfloat16)
    bias[:, :, :, 100:] = float("-inf")  # the masked path's key mask
    assert uses_math_kernel(q)
    out = scaled_dot_product(q, k, v, bias)
    out.float().square().sum().backward()
    chosen = [out.detach().float(), *(t.grad.float() for t in (q, k, v))]
    refs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*refs, attn_mask=bias.double())
    ref.square().sum().backward()
    fused = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out_fused = F.scaled_dot_product_attention(*fused, attn_mask=bias)
    out_fused.float().square().sum().backward()
    for mine, theirs, exact in zip(chosen, [out_fused.detach().float(), *(t.grad.float() for t in fused)],
                                   [ref.detach(), *(t.grad for t in refs)]):
        scale = exact.abs().max().item()
        # each within bf16's rounding of the float64 result, and no farther from it than the fused kernel
        assert (mine.double() - exact).abs().max().item() <= 0.02 * scale
        assert (mine.double() - exact).abs().max().item() <= 1.5 * (theirs.double() - exact).abs().max().item() + 1e-6


@pytest.mark.parametrize("mask", [False, True])
def test_split_block_computes_timms_block(mask):
    torch.manual_seed(0)
    timm_block = Block(192, 3, qkv_bias=True)
    ours = SplitBlock(192, 3, qkv_bias=True)
    ours.load_state_dict(timm_block.state_dict())
    x = torch.randn(2, 50, 192)
    bias = None
    if mask:
        bias = torch.zeros(2, 1, 1, 50)
        bias[:, :, :, 40:] = float("-inf")
    torch.testing.assert_close(ours(x, attn_mask=bias), timm_block(x, attn_mask=bias), rtol=0, atol=1e-6)
