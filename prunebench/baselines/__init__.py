"""Baseline pruning methods: DynamicViT, TPS, SViT, EViT, ToMe and the random/oracle controls (each registers itself)."""

from prunebench.baselines import controls, dynamicvit, evit, svit, tome, tps  # noqa: F401
