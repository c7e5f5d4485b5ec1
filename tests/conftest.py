"""Shared fixtures: tiny random-init models built offline and loaded by path."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(1)  # the test models are tiny: a second thread costs more in syncing than it gives


@pytest.fixture(scope="session")
def bundled_model_path():
    from preftune.assets import tiny_model_path

    return tiny_model_path()
