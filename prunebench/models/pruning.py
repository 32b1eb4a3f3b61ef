"""The one pruning interface, and the machinery every method shares.

The backbone (``PrunableViT``) asks a ``PruningMethod`` at each of its positions which tokens stay.
The method sees the *candidate* tokens of that stage and returns a hard keep decision over them
(with a straight-through gradient in training) plus anything its loss needs. Methods never run or
modify the transformer blocks; the backbone applies the decision in one of two execution paths
(masked for training, gather/scatter for inference), see ``prunebench.models.vit``.

Candidates are the currently active tokens for methods without reactivation (VPP, DynamicViT,
TPS), and all tokens for methods with reactivation (SViT). The backbone multiplies the method's
decision with the candidate weight, so the mask recorded for a stage is always the *cumulative*
keep mask of all N tokens that is in force from that block on.

Methods that shorten the sequence *inside* a block, which a keep mask cannot express (EViT's fused
token, ToMe's merges), use the one extension of this interface instead of ``select``: at their
``merge_positions`` the backbone runs the block's attention half, hands the method the sequence
with the attention's keys (and probabilities) as ``TokenGroups``, and runs the MLP half on the
sequence the method's ``Merge`` describes. The backbone keeps track of which token carries each
patch and returns the dense map of all N patches (``prunebench.models.merging``).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gumbel_noise(like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """I.i.d. Gumbel(0, 1) samples shaped like ``like`` (seeded by ``generator`` if given)."""
    u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    tiny = torch.finfo(like.dtype).tiny
    # −log(−log u), in place: the same values without four temporaries (VPP draws N × N' of them per frame)
    return u.clamp_(min=tiny, max=1.0 - 1e-7).log_().neg_().log_().neg_()


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """Value of ``hard``, gradient of ``soft``."""
    return hard + soft - soft.detach()


def hard_gumbel_keep(
    log_probs: Tensor,
    *,
    noise_scale: float,
    temperature: float,
    noise: bool,
    generator: torch.Generator | None = None,
    gradient: bool = True,
) -> Tensor:
    """Hard keep decision (1 = keep) from two-class log-probabilities ``(..., 2)``, channel 0 = keep.

    ``noisy = log_probs + noise_scale * Gumbel``; the decision is ``argmax(noisy)``; the
    straight-through gradient is that of ``softmax(noisy / temperature)[keep]``.

    - standard Gumbel-softmax(ℓ, τ) (SViT, DynamicViT, TPS): ``noise_scale=1, temperature=τ``,
      so P(keep) = σ(Δ) for any τ;
    - VPP's call Gumbel-softmax(τ·ℓ, τ): ``noise_scale=1/τ, temperature=1``, so P(keep) = σ(τ·Δ)
      (docs/methods.md §1.2).

    ``noise=False`` gives the deterministic decision ``Δ > 0``.
    """
    # in fp32 whatever the autocast: in bf16 the uniform draws have 8 bits and a straight-through keep 1 + s − s
    # rounds to 0.996, which would scale the kept tokens' updates and bias the ratio losses
    log_probs = log_probs.float()
    noisy = log_probs + noise_scale * gumbel_noise(log_probs, generator) if noise else log_probs
    hard = (noisy[..., 0] > noisy[..., 1]).to(log_probs.dtype)
    if not gradient:
        return hard
    soft = torch.softmax(noisy / temperature, dim=-1)[..., 0]
    return straight_through(hard, soft)


def topk_mask(scores: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """0/1 mask ``(B, n)`` of the ``k`` highest scores per row, among ``valid`` entries only."""
    if valid is not None:
        scores = scores.masked_fill(valid <= 0, float("-inf"))
    k = min(k, scores.shape[1])
    index = scores.topk(k, dim=1).indices
    return torch.zeros_like(scores).scatter_(1, index, 1.0)


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i]]`` for tokens ``x`` ``(B, n, D)`` and ``index`` ``(B, m)``."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def keep_count(num_tokens: int, ratio: float) -> int:
    """Fixed keep count ⌊N·ratio⌋ used by the top-k selectors (at least one token)."""
    return max(1, math.floor(num_tokens * ratio + 1e-9))


class TokenMLP(nn.Module):
    """Per-token two-class scorer ``LN → Linear(D→h) → GELU → Linear(h→2) → log-softmax``.

    Channel 0 means "keep". This is the selector of SViT and of VPP's SMs (h = D/4), and the
    scoring head of VPP's Map-SM (h = D/2).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        return F.log_softmax(self.fc2(F.gelu(self.fc1(self.norm(tokens)))), dim=-1)


@dataclass
class Candidates:
    """The tokens a method decides on at one stage.

    Attributes:
        tokens: ``(B, n, D)`` token features (the block input).
        weight: ``(B, n)`` cumulative keep of each candidate before this stage; in training a 0/1
            float carrying straight-through gradients, in inference 1 for real candidates and 0 for
            padding (batch > 1). Methods with reactivation get all ones.
        index: ``(B, n)`` position of each candidate in the full ``h×w`` token grid.
        grid: ``(h, w)`` of the full token grid; ``N = h·w``.
    """

    tokens: Tensor
    weight: Tensor
    index: Tensor
    grid: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        """N, the number of tokens of the full grid."""
        return self.grid[0] * self.grid[1]


@dataclass
class Selection:
    """A method's answer at one stage.

    Attributes:
        keep: ``(B, n)`` hard 0/1 decision over the candidates (straight-through in training).
        tokens: candidate features rewritten by the method before the block runs (TPS's squeeze),
            or None when the method leaves them as they are.
        aux: tensors the method's loss needs later.
    """

    keep: Tensor
    tokens: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class TokenGroups:
    """The sequence a merging method sees inside a block, after the attention residual.

    Attributes:
        tokens: ``(B, n, D)`` features after the block's attention residual.
        size: ``(B, n)`` number of grid patches each token stands for (1 for a patch of its own,
            0 for a token that stands for none, such as EViT's fused token).
        keys: ``(B, heads, n, D/heads)`` the keys of the block's attention.
        attention: ``(B, heads, n, n)`` attention probabilities (rows are queries), computed only
            for methods with ``needs_attention``; None otherwise.
        grid: ``(h, w)`` of the full token grid; ``N = h·w``.
    """

    tokens: Tensor
    size: Tensor
    keys: Tensor
    attention: Tensor | None
    grid: tuple[int, int]

    @property
    def num_tokens(self) -> int:
        """N, the number of tokens of the full grid."""
        return self.grid[0] * self.grid[1]


@dataclass
class Merge:
    """A merging method's answer inside a block: the shorter sequence the MLP half runs on.

    Attributes:
        tokens: ``(B, m, D)`` the new sequence (the same ``m`` for every sample).
        dest: ``(B, n)`` long, for each old token the index in the new sequence that carries its
            patches from now on (its own slot, or the token it was merged into); −1 when its
            patches leave the sequence and keep the old token's current features in the dense map.
        host: ``(B, m)`` long, for each new token the old token whose grid cell it occupies in the
            keep mask; −1 for a token without a cell (EViT's fused token).
    """

    tokens: Tensor
    dest: Tensor
    host: Tensor


@dataclass
class StageRecord:
    """What happened at one pruning position: the cumulative keep mask ``(B, N)`` from there on."""

    position: int
    keep: Tensor
    aux: dict[str, Tensor]


@dataclass
class FrameContext:
    """Per-forward scratch shared by the backbone and the method.

    ``state_in`` is the temporal state from the previous frame of the same video streams (None on
    a stream's first frame); the method writes the state for the next frame into ``state_out``.
    ``generator`` seeds the selectors' noise (None: torch's global generator). ``foreground`` is
    the ``(B, N)`` bool/0-1 mask of patches covered by any ground-truth instance (a patch is
    covered if any pixel of an instance mask falls inside it); only methods with
    ``needs_foreground`` read it, and only the benchmark's evaluation supplies it.
    """

    grid: tuple[int, int]
    training: bool
    generator: torch.Generator | None = None
    foreground: Tensor | None = None
    state_in: dict[str, Any] | None = None
    state_out: dict[str, Any] = field(default_factory=dict)
    records: list[StageRecord] = field(default_factory=list)


class PruningMethod(nn.Module, abc.ABC):
    """Base class of every pruning method.

    A subclass sets ``name`` and ``Params`` (a dataclass with ``validate``), builds its selectors
    in ``__init__`` and implements ``select`` (and ``loss`` if it has one). Optional hooks:
    ``observation_points`` + ``observe`` to read the token map between blocks (VPP's state).
    Every method with positions states its keep targets (``stage_targets``) and which of them a
    loss learns (``learned_stages``); the others are fixed by construction (top-k counts).

    Methods that shorten the sequence inside blocks derive from ``MergingMethod`` instead.
    """

    name: ClassVar[str]
    Params: ClassVar[type]
    reactivates: ClassVar[bool] = False
    #: True when the number of kept tokens depends on the image (costs need real frames)
    image_dependent: ClassVar[bool] = False
    #: True when ``select`` reads the ground-truth ``FrameContext.foreground`` (the oracle)
    needs_foreground: ClassVar[bool] = False

    def __init__(self, params: Any, dim: int, depth: int):
        super().__init__()
        self.params = params
        self.dim = dim
        self.depth = depth

    @property
    def positions(self) -> tuple[int, ...]:
        """Block indices at whose input ``select`` is called, in increasing order."""
        return ()

    @property
    def observation_points(self) -> tuple[int, ...]:
        """Boundaries b (0..depth; b = input of block b) at which ``observe`` is called."""
        return ()

    @abc.abstractmethod
    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        """Decide which candidates stay from block ``position`` on."""

    def observe(self, boundary: int, tokens: Tensor, active: Tensor, ctx: FrameContext) -> None:
        """See the full token map ``(B, N, D)`` and active mask ``(B, N)`` at a boundary."""

    def loss(self, ctx: FrameContext) -> Tensor:
        """The method's auxiliary loss for this forward (a scalar)."""
        return torch.zeros(())

    def stage_targets(self) -> dict[int, float]:
        """Block position → absolute cumulative keep target of that stage (fraction of all N)."""
        return {}

    def learned_stages(self) -> tuple[int, ...]:
        """Positions whose keep rate a learned selector reaches by a loss toward its target.

        The other positions of ``stage_targets`` keep their target by construction (fixed top-k).
        """
        return ()

    def dynamic_scorers(self) -> dict[int, TokenMLP]:
        """Position → the scorer of each stage whose kept count at inference is decided token by token
        (no top-k): its keep logit (channel 0) against a threshold sets how many tokens the stage keeps."""
        return {}

    def num_parameters(self) -> int:
        """Parameters the method adds to the backbone."""
        return sum(p.numel() for p in self.parameters())


class MergingMethod(PruningMethod):
    """Base class of methods that shorten the sequence inside blocks (EViT, ToMe).

    Inside each block of ``merge_positions`` the backbone runs the attention half, calls ``merge``
    and runs the MLP half on the sequence it returns. Such a method has no ``positions`` and no
    observation points, so ``select`` is never called. Its ``stage_targets`` are keyed by the
    block from whose input a merge's count is in force (merge position + 1), since a merge inside
    block ``p`` changes the tokens *entering* block ``p + 1`` (PKR counts tokens entering blocks).
    """

    #: True when ``merge`` reads the attention probabilities (the block then computes them explicitly)
    needs_attention: ClassVar[bool] = False
    #: True when every key's attention logit gets ``log size`` added (ToMe's proportional attention)
    proportional_attention: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def merge_positions(self) -> tuple[int, ...]:
        """Blocks inside which ``merge`` is called, in increasing order."""

    @abc.abstractmethod
    def merge(self, position: int, groups: TokenGroups, ctx: FrameContext) -> Merge | None:
        """Shorten the sequence inside block ``position``; None leaves it as it is."""

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        """A merging method has no ``positions``: the backbone runs it through ``models.merging``, so reaching
        this is a caller's error (RuntimeError), not a missing implementation."""
        raise RuntimeError(f"method '{self.name}' merges inside blocks; the backbone runs it through "
                           "prunebench.models.merging, never through select()")


def ratio_error(keep: Tensor, target: float, per_sample: bool = False) -> Tensor:
    """``(mean(keep) - target)²``: batch-level by default, or the batch mean of per-sample errors."""
    if per_sample:
        return ((keep.flatten(1).mean(1) - target) ** 2).mean()
    return (keep.mean() - target) ** 2
