"""Shared test setup: few threads (2-core CI machine), deterministic seeds."""

import pytest
import torch

import prunebench  # noqa: F401  (installs the torchvision guard before timm is imported)

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _dense_cache(tmp_path_factory):
    """Dense models trained by the tests are cached in a folder of the test session, not the user's cache."""
    import os

    os.environ["PRUNEBENCH_CACHE"] = str(tmp_path_factory.mktemp("dense-cache"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _stop_in_process_ray():
    """CLI tests run in-process start a local Ray; stop it after each module (one cluster at a time)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
