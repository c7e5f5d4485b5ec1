"""Collation: exact ids and masks for a 2-pair batch of different lengths."""
import numpy as np
import pytest
import torch

from preftune.data.collate import PreferenceBatch, PreferenceCollator
from preftune.errors import ConfigError

FEATURES = [
    # pair 0: prompt 2, chosen 3, rejected 1
    {"prompt_ids": [11, 12], "chosen_ids": [21, 22, 2], "rejected_ids": [31]},
    # pair 1: prompt 3, chosen 1, rejected 2
    {"prompt_ids": [13, 14, 15], "chosen_ids": [23], "rejected_ids": [32, 2], "extra": "ignored"},
]


def test_two_pairs_exact():
    out = PreferenceCollator(pad_token_id=0)(FEATURES)
    assert set(out) == {"input_ids", "attention_mask", "completion_mask"}
    assert all(t.dtype == torch.long for t in out.values())
    assert out["input_ids"].tolist() == [
        [11, 12, 21, 22, 2],  # pair 0 chosen
        [13, 14, 15, 23, 0],  # pair 1 chosen
        [11, 12, 31, 0, 0],  # pair 0 rejected
        [13, 14, 15, 32, 2],  # pair 1 rejected
    ]
    assert out["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
    ]
    assert out["completion_mask"].tolist() == [
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1],
    ]


def test_pad_to_multiple_of_and_pad_id():
    out = PreferenceCollator(pad_token_id=9, pad_to_multiple_of=4)(FEATURES)
    assert out["input_ids"].tolist() == [
        [11, 12, 21, 22, 2, 9, 9, 9],
        [13, 14, 15, 23, 9, 9, 9, 9],
        [11, 12, 31, 9, 9, 9, 9, 9],
        [13, 14, 15, 32, 2, 9, 9, 9],
    ]
    assert out["completion_mask"].tolist()[3] == [0, 0, 0, 1, 1, 0, 0, 0]


def test_tensor_and_numpy_features():
    features = [{"prompt_ids": torch.tensor([11]), "chosen_ids": np.array([21, 2]), "rejected_ids": (31,)}]
    out = PreferenceCollator(pad_token_id=np.int64(0))(features)
    assert out["input_ids"].tolist() == [[11, 21, 2], [11, 31, 0]]
    assert out["completion_mask"].tolist() == [[0, 1, 1], [0, 1, 0]]


def test_preference_batch():
    batch = PreferenceBatch.from_inputs({**PreferenceCollator(0)(FEATURES), "other": 1})
    assert batch.batch_size == 2
    assert batch.input_ids.shape == (4, 5)
    assert set(batch.to_dict()) == {"input_ids", "attention_mask", "completion_mask"}
    with pytest.raises(ValueError, match="must have shape"):
        PreferenceBatch(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="masks must match"):
        PreferenceBatch(torch.zeros(2, 2), torch.zeros(2, 3), torch.zeros(2, 2))


def test_missing_pad_token():
    with pytest.raises(ConfigError, match=r"^The pad token id must be an integer, not None; set tokenizer\.pad_token"):
        PreferenceCollator(pad_token_id=None)
