"""Shared pytest fixtures.

Kept deliberately small: fixtures used by more than one test file live here, the rest stay in
their test file. Everything runs on CPU and offline.
"""

from __future__ import annotations

import pytest

from constants import DATA_ENV_VAR


@pytest.fixture(scope="session")
def tokenizer():
    """The offline GPT-2 tokenizer (built once per session; get_tokenizer is cached anyway)."""
    from utils import get_tokenizer

    return get_tokenizer()


@pytest.fixture
def offline_no_data_env(monkeypatch):
    """No data path from the environment and no Hub access: data resolution stays local."""
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a GPU: without one they are skipped, saying so (scripts/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here); scripts/gpu_check.sh runs these on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
