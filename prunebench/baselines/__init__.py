"""Baseline pruning methods: DynamicViT, TPS, SViT (each registers itself)."""

from prunebench.baselines import dynamicvit, svit, tps  # noqa: F401
