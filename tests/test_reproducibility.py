"""benchmarks.reproducibility: its comparison finds every difference a rerun can make and none
that only timings make, and a method run twice through its verbs compares bitwise equal."""

import math

import torch
from test_recforest import planted_split  # tests/ is on sys.path (pytest's prepend import mode)

from benchmarks.reproducibility import compare, largest_difference, run_verbs
from grove.indexstore.structures import Tree
from grove.models.method import Built, state_to_bytes


def _state(shift: float = 0.0, seconds: float = 1.0) -> dict:
    return {
        "state": {"w": torch.arange(6.0).reshape(2, 3) + shift, "b": torch.zeros(3)},
        "stats": {"seconds": seconds, "steps": 4},
        "depths": [3, 3],
        "codes": torch.arange(4),
    }


def test_largest_difference_sees_weights_and_layout_but_not_timings():
    assert largest_difference(_state(), _state(seconds=9.0)) == 0.0
    assert largest_difference(_state(), _state(shift=0.25)) == 0.25
    other = _state()
    other["state"]["w"] = torch.zeros(3, 2)
    assert math.isinf(largest_difference(_state(), other))
    other = _state()
    other["depths"] = [3, 4]
    assert largest_difference(_state(), other) == 1.0
    other = _state()
    del other["state"]["b"]
    assert math.isinf(largest_difference(_state(), other))


def _tree(items) -> Tree:
    return Tree.from_parents([-1, 0, 0], [-1, items[0], items[1]], 2, 2)


def test_compare_needs_equal_structure_and_weights_for_bitwise():
    a = Built(_tree([0, 1]), {"weights.pt": state_to_bytes(_state())})
    assert compare(a, Built(_tree([0, 1]), {"weights.pt": state_to_bytes(_state(seconds=5.0))}))["bitwise"]
    moved = compare(a, Built(_tree([1, 0]), {"weights.pt": state_to_bytes(_state())}))
    assert not moved["structure_equal"] and not moved["bitwise"] and moved["max_abs_diff"] == 0.0
    drift = compare(a, Built(_tree([0, 1]), {"weights.pt": state_to_bytes(_state(shift=1e-7))}))
    assert drift["structure_equal"] and not drift["bitwise"] and 0 < drift["max_abs_diff"] < 1e-6
    assert not compare(a, Built(_tree([0, 1]), {}))["bitwise"]


def test_recforest_run_twice_through_its_verbs_is_bitwise_equal():
    data = planted_split(n_users=48)
    values = dict(
        arity=3,
        trees=2,
        hidden=32,
        heads=4,
        encoder_layers=1,
        decoder_layers=1,
        ff=64,
        dropout=0.1,
        epochs=1,
        batch_size=64,
        embeddings="svd",
        device="cpu",
        seed=3,
    )
    result = compare(run_verbs("recforest", values, data), run_verbs("recforest", values, data))
    assert result["bitwise"], result
