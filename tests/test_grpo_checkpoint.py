"""GRPO checkpoints: the trainer state is plain tensors (read with weights_only=True, so a checkpoint in a shared
cache cannot run code) and still restores every RNG exactly."""

import random

import numpy as np
import pytest
import torch

from rlsft.grpo.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rlsft.models import build_tiny_model

RAN = []


class Payload:
    """What a hostile trainer.pt would carry: unpickling it runs code."""

    def __reduce__(self):
        return (RAN.append, ("code ran",))


def _parts():
    model, _ = build_tiny_model(layers=1, hidden=16, heads=2, kv_heads=1, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, optimizer, scheduler


def test_rng_states_round_trip_through_a_weights_only_load(tmp_path):
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand(3))
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(expected[0], again[0]) and expected[1] == again[1]
    np.testing.assert_array_equal(expected[2], again[2])


def test_a_checkpoint_never_runs_pickled_code(tmp_path):
    model, optimizer, scheduler = _parts()
    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, {"recipe_hash": "h"})
    state = torch.load(path / "trainer.pt", weights_only=True)
    assert load_checkpoint(path, *_parts(), expected_hash="h")["step"] == 1
    torch.save({**state, "extra": Payload()}, path / "trainer.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_checkpoint(path, *_parts(), expected_hash="h")
    assert RAN == []
