"""PrunableViT: a timm ViT (patch 16, no class token) that prunes tokens through a PruningMethod.

Two execution paths compute the same function:

- ``masked`` (training): every block sees all N tokens. With the cumulative keep mask ``d`` in
  force at a block, pruned tokens are removed as attention keys (an additive −inf key mask) and
  frozen: ``x ← d·Block(x) + (1−d)·x``. Straight-through gradients reach the selectors via ``d``.
- ``gather`` (inference): the blocks run on the compact sequence of the kept tokens only. Between two
  changes of the kept set the sequence is gathered once and runs through the blocks as it is; the full
  map is rebuilt by one scatter only where it is read or the kept set changes: at the next pruning
  position (a method with reactivation, SViT, decides among all tokens of the full map; one without
  decides on the compact sequence itself, and the scatter keeps the last features of the tokens it
  drops), at an observation point, at the boundaries of an adapter's interaction stages (its
  extractors read the full map; its injectors rewrite every token, and the sequence is gathered again
  from their output) and at the end. Pruned tokens keep their last features. For batch > 1 the
  sequences are padded to the longest kept count of the batch with distinct pruned tokens, which are
  key-masked and left as they are (one batched call per block rather than a per-sample loop); batch 1
  needs no padding or mask.

Either way the output is the dense ``h×w`` map of all tokens, plus the keep mask entering each
block. Merging methods (EViT, ToMe), which shorten the sequence inside blocks, run one execution on
both paths: ``prunebench.models.merging``.

With ``adapter="vit_adapter"`` (``prunebench.models.adapter``) the ViT-Adapter's injectors update the
full token map before the first block of each interaction stage, pruned tokens included, on both
paths; its extractors read the full map after each stage; the output adds its 4-level pyramid.
Merging methods run inside the adapter the same way (how a merged token takes its patches' updates:
``prunebench.models.merging``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from prunebench.errors import ConfigError
from prunebench.models.adapter import Interaction, ViTAdapter
from prunebench.models.blocks import SplitBlock
from prunebench.models.merging import run_merging
from prunebench.models.pruning import (
    Candidates,
    FrameContext,
    MergingMethod,
    PruningMethod,
    StageRecord,
    gather_tokens,
)
from prunebench.models.pretrained import read_timm_state
from prunebench.models.registry import AdapterName, backbone_spec, build_method

PATCH_SIZE = 16
Path = Literal["masked", "gather"]


@dataclass
class BackboneOutput:
    """Result of one backbone pass over a batch of frames.

    Attributes:
        features: ``(B, D, h, w)`` dense token map after the final norm.
        block_keep: ``(depth, B, N)`` 0/1 mask of the tokens entering each block.
        state: temporal state to pass with the next frame of the same streams (None if the method
            keeps none).
        records: one ``StageRecord`` per pruning position, in order.
        loss: the method's auxiliary loss (training mode), else None.
        pyramid: with an adapter, its strides 4/8/16/32 maps ``(B, D, ·, ·)``; else None.
    """

    features: Tensor
    block_keep: Tensor
    state: dict[str, Any] | None
    records: list[StageRecord]
    loss: Tensor | None
    pyramid: tuple[Tensor, Tensor, Tensor, Tensor] | None = None


def check_image_size(height: int, width: int) -> None:
    """Raise ConfigError unless both sides are positive multiples of the patch size."""
    if height <= 0 or width <= 0 or height % PATCH_SIZE or width % PATCH_SIZE:
        raise ConfigError(
            f"image size {height}x{width} is not divisible by {PATCH_SIZE}; "
            f"allowed: positive multiples of {PATCH_SIZE} for both height and width"
        )


def _key_mask(keep: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention mask ``(B, 1, 1, n)``: 0 for kept keys, −inf for the others.

    A sample with no kept key gets no mask (its block output is discarded anyway), so that
    attention never sees a row of only −inf.
    """
    allowed = keep | ~keep.any(dim=1, keepdim=True)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=keep.device)
    return mask.masked_fill_(~allowed, float("-inf"))[:, None, None, :]


def _gather_plan(active: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Where the kept tokens are: ``(index (B, n), valid (B, n) or None)``.

    ``index`` is None when every token is kept. Rows are padded to the longest kept count with
    (distinct) pruned tokens, flagged False in ``valid``; ``valid`` is None when no row needs it.
    """
    keep = active > 0.5
    if bool(keep.all()):
        return None, None
    counts = keep.sum(dim=1)
    n = int(counts.max())
    order = torch.argsort(keep.to(torch.uint8), dim=1, descending=True, stable=True)[:, :n]
    valid = torch.arange(n, device=active.device)[None, :] < counts[:, None]
    return order, (None if bool(valid.all()) else valid)


def _scatter(x: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``x`` with ``x[b, index[b, i]]`` replaced by ``values[b, i]`` (out of place)."""
    return x.scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), values)


def _run_masked(block: nn.Module, x: Tensor, active: Tensor | None) -> Tensor:
    """``block`` on all tokens ``x``: pruned ones (``active`` 0) are no keys and keep their features."""
    if active is None:
        return block(x)
    out = block(x, attn_mask=_key_mask(active > 0.5, x.dtype))
    d = active[..., None]
    return d * out + (1.0 - d) * x


def _run_compact(block: nn.Module, kept: Tensor, valid: Tensor | None) -> Tensor:
    """``block`` on a compact sequence ``kept``; padding (``valid`` False) is no key and stays as it is."""
    if valid is None:
        return block(kept)
    return torch.where(valid[..., None], block(kept, attn_mask=_key_mask(valid, kept.dtype)), kept)


class _CandidateView(NamedTuple):
    """The tokens a method decides on at a stage: ``Candidates`` without the grid."""

    tokens: Tensor  # (B, n, D)
    weight: Tensor  # (B, n)
    index: Tensor | None  # (B, n) their positions in the grid; None: all N tokens in grid order


class _Tokens(abc.ABC):
    """The token map of one forward on one execution path, and the cumulative keep mask in force."""

    def __init__(self, x: Tensor):
        self._map = x
        self.active: Tensor | None = None  # None = every token active

    def keep_mask(self) -> Tensor:
        """``(B, N)`` 0/1 mask of the active tokens."""
        return self.active if self.active is not None else self._map.new_ones(self._map.shape[:2])

    def _grid_weight(self, reactivate: bool) -> Tensor:
        """Weight of all N tokens as candidates: all ones with reactivation, else the keep mask."""
        return self._map.new_ones(self._map.shape[:2]) if reactivate else self.keep_mask()

    @abc.abstractmethod
    def full(self) -> Tensor:
        """The current ``(B, N, D)`` map of all tokens."""

    @abc.abstractmethod
    def set_full(self, x: Tensor) -> None:
        """Replace the map of all tokens (pruned ones included) by ``x``."""

    @abc.abstractmethod
    def candidates(self, reactivate: bool) -> _CandidateView:
        """The tokens a method decides on: all N (with ``reactivate``) or the active ones."""

    @abc.abstractmethod
    def rewrite(self, index: Tensor | None, tokens: Tensor) -> None:
        """Replace the features of the candidates at ``index`` (as ``candidates`` gave it) by ``tokens``."""

    @abc.abstractmethod
    def restrict(self, active: Tensor) -> None:
        """Put the cumulative keep mask ``active`` ``(B, N)`` in force for the following blocks."""

    @abc.abstractmethod
    def run(self, block: nn.Module) -> None:
        """Run ``block`` on the active tokens."""


class _MaskedTokens(_Tokens):
    """The masked path: every block sees all N tokens (see the module docstring)."""

    def full(self) -> Tensor:
        return self._map

    def set_full(self, x: Tensor) -> None:
        self._map = x

    def candidates(self, reactivate: bool) -> _CandidateView:
        return _CandidateView(self._map, self._grid_weight(reactivate), None)

    def rewrite(self, index: Tensor | None, tokens: Tensor) -> None:
        self._map = tokens

    def restrict(self, active: Tensor) -> None:
        self.active = active

    def run(self, block: nn.Module) -> None:
        self._map = _run_masked(block, self._map, self.active)


class _CompactTokens(_Tokens):
    """The gather path: the blocks run on the compact sequence of the kept tokens (see the module docstring).

    While the sequence has run through blocks since it was last scattered, the full map is stale at the
    sequence's ``index``; ``full`` scatters it back once. After a change of the kept set or of the full
    map the sequence is gathered again once, when it is next needed.
    """

    def __init__(self, x: Tensor):
        super().__init__(x)
        self._index: Tensor | None = None  # None: the sequence is the full map itself
        self._valid: Tensor | None = None
        self._sequence: Tensor | None = None  # None: to be gathered from the full map
        self._stale = False

    def full(self) -> Tensor:
        if self._stale:
            self._map = _scatter(self._map, self._index, self._sequence)
            self._stale = False
        return self._map

    def set_full(self, x: Tensor) -> None:
        self._map, self._sequence, self._stale = x, None, False

    def _compact(self) -> Tensor:
        """The compact sequence ``(B, n, D)``, gathered from the full map if it is not at hand."""
        if self._sequence is None:
            self._sequence = gather_tokens(self._map, self._index)
        return self._sequence

    def candidates(self, reactivate: bool) -> _CandidateView:
        if reactivate or self._index is None:
            return _CandidateView(self.full(), self._grid_weight(reactivate), None)
        weight = self._map.new_ones(self._index.shape) if self._valid is None else self._valid.to(self._map.dtype)
        return _CandidateView(self._compact(), weight, self._index)

    def rewrite(self, index: Tensor | None, tokens: Tensor) -> None:
        if index is None:
            self.set_full(tokens)
        else:
            self._sequence, self._stale = tokens, True

    def restrict(self, active: Tensor) -> None:
        self.set_full(self.full())  # one scatter back, if the blocks ran; the next block gathers the new set
        self.active = active
        self._index, self._valid = _gather_plan(active)

    def run(self, block: nn.Module) -> None:
        if self._index is None:
            self._map = block(self._map)
        elif self._index.shape[1] > 0:
            self._sequence, self._stale = _run_compact(block, self._compact(), self._valid), True


class PrunableViT(nn.Module):
    """A timm ``VisionTransformer`` without class token whose tokens a ``PruningMethod`` prunes,
    optionally inside a ViT-Adapter (``adapter="vit_adapter"``).

    Its blocks are ``SplitBlock``s: timm's block, which merging methods can also run half by half.
    """

    def __init__(self, backbone: str, method: PruningMethod, drop_path_rate: float = 0.0,
                 adapter: AdapterName = "none"):
        super().__init__()
        if adapter not in get_args(AdapterName):
            raise ConfigError(f"unknown adapter '{adapter}'; allowed: {', '.join(get_args(AdapterName))}")
        timm_name, dim, _, depth = backbone_spec(backbone)
        if method.dim != dim or method.depth != depth:
            raise ConfigError(
                f"method '{method.name}' was built for D={method.dim}, depth={method.depth}; "
                f"backbone '{backbone}' has D={dim}, depth={depth}"
            )
        self.backbone_name = backbone
        self.vit = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=0,
            class_token=False,
            global_pool="",  # keeps the final LayerNorm in ``norm`` (timm moves it to an unused fc_norm for "avg")
            dynamic_img_size=True,
            drop_path_rate=drop_path_rate,
            block_fn=SplitBlock,
        )
        self.method = method
        self.embed_dim = dim
        self.depth = depth
        self.adapter_name = adapter
        self.adapter = ViTAdapter(dim, depth, drop_path_rate) if adapter == "vit_adapter" else None

    def embed(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch-embed and add position embeddings resized (bicubic) to the image's grid."""
        batch, _, height, width = images.shape
        check_image_size(height, width)
        x = self.vit.patch_embed(images)  # (B, h, w, D) with dynamic_img_size
        h, w = x.shape[1], x.shape[2]
        pos = resample_abs_pos_embed(
            self.vit.pos_embed, new_size=(h, w), old_size=self.vit.patch_embed.grid_size,
            num_prefix_tokens=0,
        )
        x = self.vit.pos_drop(x.reshape(batch, h * w, -1) + pos)
        return self.vit.norm_pre(x), (h, w)

    def forward(
        self,
        images: Tensor,
        state: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
        path: Path | None = None,
        foreground: Tensor | None = None,
    ) -> BackboneOutput:
        """Run the backbone on ``(B, 3, H, W)`` images (H, W multiples of 16).

        Args:
            images: normalised frames.
            state: the ``state`` of the previous frame's output for the same video streams, or
                None on the first frame of a stream.
            generator: seeds the selectors' noise (None: torch's global generator).
            path: ``masked`` or ``gather``; default: masked in training mode, gather in eval mode
                (merging methods run the same computation on both).
            foreground: ``(B, N)`` ground-truth foreground patches, for methods that
                ``needs_foreground`` (see ``prunebench.data.pipeline.foreground_patches``).
        """
        path = path or ("masked" if self.training else "gather")
        x, grid = self.embed(images)
        interaction = self.adapter.start(images, grid) if self.adapter is not None else None
        batch = x.shape[0]
        method = self.method
        ctx = FrameContext(
            grid=grid, training=self.training, generator=generator, foreground=foreground, state_in=state,
        )
        if isinstance(method, MergingMethod):
            x, block_keep = run_merging(self.vit.blocks, x, method, ctx, interaction)
        else:
            x, block_keep = self._run_blocks(x, ctx, path, interaction)
        x = self.vit.norm(x)
        h, w = grid
        features = x.transpose(1, 2).reshape(batch, self.embed_dim, h, w)
        return BackboneOutput(
            features=features,
            block_keep=torch.stack(block_keep),
            state=ctx.state_out or None,
            records=ctx.records,
            loss=method.loss(ctx) if self.training else None,
            pyramid=interaction.pyramid(features) if interaction is not None else None,
        )

    def _run_blocks(self, x: Tensor, ctx: FrameContext, path: Path,
                    interaction: Interaction | None) -> tuple[Tensor, list[Tensor]]:
        """The blocks with the method's keep masks on ``path`` (and the adapter's ``interaction``, if any):
        the dense map and the mask entering each block."""
        method = self.method
        positions, observed = set(method.positions), set(method.observation_points)
        tokens = _MaskedTokens(x) if path == "masked" else _CompactTokens(x)
        block_keep = []
        for i, block in enumerate(self.vit.blocks):
            if interaction is not None and interaction.injects(i):
                tokens.set_full(interaction.before_block(i, tokens.full()))  # every token, pruned ones included
            if i in observed:
                method.observe(i, tokens.full(), tokens.keep_mask(), ctx)
            if i in positions:
                self._stage(i, tokens, ctx)
            block_keep.append(tokens.keep_mask())
            tokens.run(block)
            if interaction is not None and interaction.extracts(i):
                interaction.after_block(i, tokens.full())
        if self.depth in observed:
            method.observe(self.depth, tokens.full(), tokens.keep_mask(), ctx)
        return tokens.full(), block_keep

    def _stage(self, position: int, tokens: _Tokens, ctx: FrameContext) -> None:
        """Ask the method at ``position``; apply its rewritten features and put the new cumulative mask in force."""
        view = tokens.candidates(self.method.reactivates)
        batch, num_tokens = view.weight.shape[0], ctx.grid[0] * ctx.grid[1]
        index = torch.arange(num_tokens, device=view.weight.device).expand(batch, -1) if view.index is None else view.index
        selection = self.method.select(position, Candidates(view.tokens, view.weight, index, ctx.grid), ctx)
        keep = selection.keep * view.weight
        full_keep = keep if view.index is None else view.weight.new_zeros(batch, num_tokens).scatter(1, index, keep)
        if selection.tokens is not None:
            tokens.rewrite(view.index, selection.tokens)
        ctx.records.append(StageRecord(position, full_keep, selection.aux))
        tokens.restrict(full_keep)


def create_backbone(
    backbone: str = "vit_tiny",
    method: str = "dense",
    params: dict[str, Any] | None = None,
    drop_path_rate: float = 0.0,
    adapter: AdapterName = "none",
) -> PrunableViT:
    """Build a PrunableViT with a registered pruning method (parameters validated) and optional adapter."""
    _, dim, _, depth = backbone_spec(backbone)
    return PrunableViT(backbone, build_method(method, params, dim, depth), drop_path_rate=drop_path_rate, adapter=adapter)


def load_timm_weights(model: PrunableViT, path: str) -> None:
    """Load a local timm ViT checkpoint (safetensors or a torch file) into the backbone (``read_timm_state``,
    then ``load_timm_state``)."""
    load_timm_state(model, read_timm_state(path), path)


def load_timm_state(model: PrunableViT, state: dict[str, Tensor], path: str) -> None:
    """Load a timm ViT state dict read from ``path`` into the backbone.

    The class token, its position-embedding entry and the classifier are dropped; position
    embeddings are kept on their own grid and resized at run time. ConfigError naming ``path`` when the
    tensors do not fit the backbone.
    """
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "cls_token"))}
    pos = state.get("pos_embed")
    grid = model.vit.patch_embed.grid_size
    if pos is not None and pos.shape[1] == grid[0] * grid[1] + 1:
        state["pos_embed"] = pos[:, 1:]
    try:
        missing, unexpected = model.vit.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of the wrong shape: another backbone size
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise ConfigError(f"{path}: not a {model.backbone_name} checkpoint ({first})") from None
    if missing or unexpected:
        raise ConfigError(f"{path}: not a {model.backbone_name} checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
