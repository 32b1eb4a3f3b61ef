"""Shared test setup: few threads (2-core CI machine), deterministic seeds."""

import pytest
import torch

import prunebench  # noqa: F401  (installs the torchvision guard before timm is imported)

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
