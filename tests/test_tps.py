"""TPS's squeeze (docs/methods.md §5): the fused values, and the gradient the fixed-shape (training) call gives
the keep decisions of kept tokens."""

import math

import torch

from prunebench.baselines.tps import squeeze


def _tokens() -> torch.Tensor:
    return torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_a_pruned_token_is_fused_into_its_most_similar_host():
    tokens = _tokens()
    kept = torch.tensor([[True, True, True, False, False]])
    pruned_weight = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)  # token 4: pruned earlier
    out = squeeze(tokens, kept, tokens, pruned_weight, same_tokens=True)
    unit = torch.nn.functional.normalize(tokens[0], dim=-1)
    cosine = unit[3] @ unit[:3].T
    host = int(cosine.argmax())
    expected = tokens[0].clone()
    expected[host] = (math.e * tokens[0, host] + cosine[host].exp() * tokens[0, 3]) / (math.e + cosine[host].exp())
    torch.testing.assert_close(out[0, :3], expected[:3])
    torch.testing.assert_close(out[0, 3:], tokens[0, 3:])  # pruned tokens are not hosts: their features stay


def test_a_kept_token_gets_the_gradient_of_being_squeezed_into_its_nearest_other_host():
    """The released code masks the diagonal: a kept token's row points at its nearest other kept token, so the
    (zero) weight of that row carries the gradient of squeezing the token there. Matched to itself it would carry
    none (the host's own value would not move)."""
    tokens = _tokens()
    kept = torch.tensor([[True, True, True, False, False]])
    pruned_weight = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    out = squeeze(tokens, kept, tokens, pruned_weight, same_tokens=True)
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (out * direction).sum().backward()

    unit = torch.nn.functional.normalize(tokens[0], dim=-1)
    similarity = (unit @ unit.T).fill_diagonal_(-math.inf)[:, :3]  # columns: the kept tokens
    best, host = similarity.max(dim=-1)
    mass = torch.full((3,), math.e, dtype=torch.float64)
    mass[host[3]] += best[3].exp()  # token 3, the one pruned at this stage, weighs in on its host
    for i in range(3):
        j = int(host[i])
        assert j != i
        # d out_j / d w_i = exp(c_ij) (x_i − out_j) / (e + Σ weights into j)
        expected = best[i].exp() * ((tokens[0, i] - out[0, j].detach()) @ direction[0, j]) / mass[j]
        torch.testing.assert_close(pruned_weight.grad[0, i], expected)
        assert abs(float(pruned_weight.grad[0, i])) > 1e-6
