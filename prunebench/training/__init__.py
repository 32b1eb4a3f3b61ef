"""The training protocol: dense training, then sparse fine-tuning of each method (plain PyTorch)."""
