"""Shared fixtures for the core tests (no ComfyUI needed)."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_world():
    from higfa.tiny import TinyWorld

    return TinyWorld(seed=0, latent_size=8, num_classes=4)


class CountingClassifier(torch.nn.Module):
    """Wraps a classifier; counts forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, image):
        self.calls += 1
        return self.inner(image)


@pytest.fixture
def counting():
    return CountingClassifier
