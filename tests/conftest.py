"""Shared fixtures: tiny random models with the real architectures (built once per test session)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_handrefiner.tiny import TinyModelPaths, ensure_tiny_models

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
EXAMPLES = ROOT / "examples"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModelPaths:
    """Paths of the tiny inpainting (9-ch) and regular (4-ch) checkpoints, their yamls and a tiny ControlNet."""
    return ensure_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_sd(tiny_models):
    from lib_handrefiner.sd_model import load_sd_checkpoint

    return load_sd_checkpoint(tiny_models.checkpoint)


@pytest.fixture(scope="session")
def tiny_sd_regular(tiny_models):
    from lib_handrefiner.sd_model import load_sd_checkpoint

    return load_sd_checkpoint(tiny_models.regular_checkpoint)


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_models):
    from lib_handrefiner.controlnet import load_controlnet

    return load_controlnet(tiny_models.controlnet)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    # Several engineers and CI jobs share the cores; tiny models do not gain from more threads.
    torch.set_num_threads(1)
