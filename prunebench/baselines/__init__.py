"""Baseline pruning methods: DynamicViT, TPS, SViT and the random/oracle controls (each registers itself)."""

from prunebench.baselines import controls, dynamicvit, svit, tps  # noqa: F401
