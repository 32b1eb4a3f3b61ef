"""VPP, Video Patch Pruning (Glandorf et al., CVPRW 2026), as restated in docs/methods.md §2.

Stages: a Mapping-Selective Module (Map-SM) on the input of block ``map_position`` maps the
previous frame's block-``ref_block`` output onto the current tokens and keeps the top ⌊κN⌋;
Selective Modules (SMs) at ``sm_positions`` sample a dynamic keep mask (scaled Gumbel, τ) that is
multiplied with the earlier masks (no reactivation).

Temporal state (per video stream, passed explicitly from frame to frame; None = first frame):
``x_ref`` (Map-SM keys), ``x_to_map`` (block-``ref_block`` output = values), ``selector`` (keep mask
in force at block ``ref_block``) and the token grid. On a stream's first frame the Map-SM keeps
every token (blocks ``map_position`` .. next stage run dense); the SMs still run.

``x_ref`` has two readings (docs/methods.md §2.2): ``paper`` = the token map at the input of the Map-SM
block; ``code`` = the map at the end of the Map-SM stage (input of the next pruning position),
which is what the released code's in-place aliasing stores at inference. The chosen reading is
used in training and in inference alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.models.params import (
    check_block,
    check_positions,
    check_positive,
    check_ratio,
)
from prunebench.models.pruning import (
    Candidates,
    FrameContext,
    PruningMethod,
    Selection,
    TokenMLP,
    gumbel_noise,
    hard_gumbel_keep,
    keep_count,
    ratio_error,
    straight_through,
    topk_mask,
)
from prunebench.models.registry import register_method

SMOOTHING_RADIUS = 4  # 9×9 average pooling of the Map-SM log-probabilities


@dataclass(frozen=True)
class VPPParams:
    """VPP's parameters (defaults: the paper's Table 6 / the official 55 % config)."""

    map_position: int | None = 1
    ref_block: int = 5
    kappa: float = 0.7
    q: float = 0.8
    sm_positions: tuple[int, ...] = (3, 6, 9)
    tau: float = 10.0
    map_target: float = 0.5
    lambda_sm: float = 40.0
    lambda_map: float = 10.0
    x_ref: Literal["code", "paper"] = "code"
    stochastic_inference: bool = True

    def validate(self, method: str, depth: int) -> None:
        """Check ranges and the order of the stages."""
        check_ratio(method, "kappa", self.kappa)
        check_ratio(method, "q", self.q)
        if not 0.0 < self.map_target < 1.0:
            raise ConfigError(
                f"{method}: map_target={self.map_target} is outside (0, 1); allowed: a mean keep "
                "probability in (0, 1)"
            )
        check_positive(method, "tau", self.tau)
        check_positive(method, "lambda_sm", self.lambda_sm, allow_zero=True)
        check_positive(method, "lambda_map", self.lambda_map, allow_zero=True)
        check_block(method, "ref_block", self.ref_block, depth)
        check_positions(method, "sm_positions", self.sm_positions, depth)
        if self.map_position is None:
            return
        check_block(method, "map_position", self.map_position, depth)
        if self.map_position >= self.ref_block:
            raise ConfigError(
                f"{method}: map_position={self.map_position} is at or after its reference block "
                f"ref_block={self.ref_block}; allowed: map_position in 0..{self.ref_block - 1}"
            )
        if self.sm_positions and self.sm_positions[0] <= self.map_position:
            raise ConfigError(
                f"{method}: sm_positions={list(self.sm_positions)} do not all come after "
                f"map_position={self.map_position}; allowed: SM positions in "
                f"{self.map_position + 1}..{depth - 1}"
            )

    @property
    def sm_targets(self) -> tuple[float, ...]:
        """Absolute cumulative keep targets of the SMs: κ·q^s, s = 1..S."""
        return tuple(self.kappa * self.q ** (s + 1) for s in range(len(self.sm_positions)))


@functools.lru_cache(maxsize=2)  # a video's frames share one size: its pair, and the one before
def spatial_prior(grid: tuple[int, int], key_grid: tuple[int, int], device: torch.device) -> Tensor:
    """Log-distance prior ``(N, N')`` between the current frame's tokens and the previous frame's, both
    in grid order (row-major).

    Coordinates are normalised per axis to [0, 1]; with the Manhattan distance δ ∈ [0, 2] the
    prior is ``log10(10·(2 − δ)/2 + 1e-6)``: 1 at the same place, −6 at opposite corners. It depends
    on the two grids only, so it is computed once per pair (an ``N × N'`` matrix: at 960 tokens building
    it took about a tenth of a VPP frame); the cached tensor is never written to.
    """

    def coords(h: int, w: int) -> tuple[Tensor, Tensor]:
        index = torch.arange(h * w, device=device)
        u = (index % w).float() / max(w - 1, 1)
        v = torch.div(index, w, rounding_mode="floor").float() / max(h - 1, 1)
        return u, v

    with torch.inference_mode(False):  # a normal tensor: usable in training after an inference-mode call
        uq, vq = coords(*grid)
        uk, vk = coords(*key_grid)
        delta = (uq[:, None] - uk).abs() + (vq[:, None] - vk).abs()
        return torch.log10(10.0 * (2.0 - delta) / 2.0 + 1e-6)


@register_method
class VPP(PruningMethod):
    """Map-SM + SMs with temporal state; see the module docstring."""

    name = "vpp"
    Params = VPPParams
    image_dependent = True

    def __init__(self, params: VPPParams, dim: int, depth: int):
        super().__init__(params, dim, depth)
        self.map_scorer = TokenMLP(dim, dim // 2) if params.map_position is not None else None
        self.sm_scorers = nn.ModuleList(TokenMLP(dim, dim // 4) for _ in params.sm_positions)
        self._sm_index = {p: i for i, p in enumerate(params.sm_positions)}
        later = [p for p in params.sm_positions if params.map_position is not None and p > params.map_position]
        self._code_ref_boundary = later[0] if later else depth

    @property
    def positions(self) -> tuple[int, ...]:
        head = () if self.params.map_position is None else (self.params.map_position,)
        return head + self.params.sm_positions

    @property
    def x_ref_boundary(self) -> int:
        """Boundary whose token map becomes the next frame's Map-SM keys."""
        p = self.params
        return p.map_position if p.x_ref == "paper" else self._code_ref_boundary

    @property
    def observation_points(self) -> tuple[int, ...]:
        if self.params.map_position is None:
            return ()
        return tuple(sorted({self.x_ref_boundary, self.params.ref_block + 1}))

    def stage_targets(self) -> dict[int, float]:
        """Map-SM position → κ (its top-k), SM positions → κ·q^s."""
        head = {} if self.params.map_position is None else {self.params.map_position: self.params.kappa}
        return head | dict(zip(self.params.sm_positions, self.params.sm_targets))

    def learned_stages(self) -> tuple[int, ...]:
        """The SMs; the Map-SM keeps ⌊κN⌋ by construction."""
        return self.params.sm_positions

    def dynamic_scorers(self) -> dict[int, TokenMLP]:
        """The SMs (the Map-SM keeps a fixed ⌊κN⌋)."""
        return dict(zip(self.params.sm_positions, self.sm_scorers))

    def observe(self, boundary: int, tokens: Tensor, active: Tensor, ctx: FrameContext) -> None:
        """Store this frame's keys, values and reference mask for the next frame."""
        if boundary == self.x_ref_boundary:
            ctx.state_out["x_ref"] = tokens
        if boundary == self.params.ref_block + 1:
            ctx.state_out["x_to_map"] = tokens
            ctx.state_out["selector"] = active > 0.5
            ctx.state_out["grid"] = ctx.grid

    def _noise(self, ctx: FrameContext) -> bool:
        return ctx.training or self.params.stochastic_inference

    def select(self, position: int, candidates: Candidates, ctx: FrameContext) -> Selection:
        if position == self.params.map_position:
            return self._map_select(candidates, ctx)
        log_probs = self.sm_scorers[self._sm_index[position]](candidates.tokens)
        keep = hard_gumbel_keep(
            log_probs,
            noise_scale=1.0 / self.params.tau,
            temperature=1.0,
            noise=self._noise(ctx),
            generator=ctx.generator,
            gradient=ctx.training,
        )
        return Selection(keep)

    def _map_select(self, candidates: Candidates, ctx: FrameContext) -> Selection:
        state = ctx.state_in
        if state is None:  # first frame of the stream: nothing to map from, keep everything
            return Selection(torch.ones_like(candidates.weight))
        tokens = candidates.tokens
        if tokens.shape[1] != candidates.num_tokens:
            raise RuntimeError("the Map-SM must be the first pruning stage (it sees all tokens)")
        p, noise = self.params, self._noise(ctx)
        # (B, N, N') raw dot products plus the prior (tokens in grid order: the first stage), in fp32 whatever
        # the autocast: bf16 products of ~700 round by ~1, ten times the noise scale 1/τ, and change the
        # matches of similar tokens; the N × N' work after it runs in place, with the same values
        prior = spatial_prior(ctx.grid, state["grid"], tokens.device)
        with torch.autocast(tokens.device.type, enabled=False):
            scores = tokens.float() @ state["x_ref"].float().transpose(1, 2) + prior
        keys = state["selector"]
        keys = keys | ~keys.any(dim=1, keepdim=True)  # no kept key at all: fall back to every key
        scores.masked_fill_(~keys[:, None, :], float("-inf"))
        if noise:
            scores += gumbel_noise(scores, ctx.generator).div_(p.tau)
        match = scores.argmax(dim=-1)
        values = state["x_to_map"]
        if ctx.training:
            soft = torch.softmax(scores, dim=-1)
            hard = torch.zeros_like(soft).scatter_(-1, match[..., None], 1.0)
            mapped = straight_through(hard, soft) @ values
        else:
            mapped = values.gather(1, match[..., None].expand(-1, -1, values.shape[-1]))
        log_probs = self._smooth(self.map_scorer(mapped).float(), ctx.grid)  # fp32, as ``hard_gumbel_keep``
        if noise:
            log_probs = log_probs + gumbel_noise(log_probs, ctx.generator) / p.tau
        score = torch.softmax(log_probs, dim=-1)[..., 0]
        top = topk_mask(score.detach(), keep_count(candidates.num_tokens, p.kappa), candidates.weight)
        keep = straight_through(top, score) if ctx.training else top
        return Selection(keep, aux={"map_score": score})

    @staticmethod
    def _smooth(log_probs: Tensor, grid: tuple[int, int]) -> Tensor:
        """9×9 mean of the log-probabilities over the token grid (replicate padding)."""
        batch, _, channels = log_probs.shape
        image = log_probs.transpose(1, 2).reshape(batch, channels, *grid)
        r = SMOOTHING_RADIUS
        image = F.avg_pool2d(F.pad(image, (r, r, r, r), mode="replicate"), 2 * r + 1, stride=1)
        return image.reshape(batch, channels, -1).transpose(1, 2)

    def loss(self, ctx: FrameContext) -> Tensor:
        """λ_SM·[Σ_s ℓ(d_s, κq^s) + λ_map·ℓ(s, target)] / (S + λ_map); without Map-SM: λ_SM·Σ_s ℓ / S."""
        p = self.params
        sm = [r for r in ctx.records if r.position in self._sm_index]
        total = sum((ratio_error(r.keep, t) for r, t in zip(sm, p.sm_targets)), torch.zeros(()))
        weight = float(len(sm))
        map_record = next((r for r in ctx.records if "map_score" in r.aux), None)
        if map_record is not None:
            total = total + p.lambda_map * ratio_error(map_record.aux["map_score"], p.map_target)
            weight += p.lambda_map
        return p.lambda_sm * total / weight if weight > 0 else total

