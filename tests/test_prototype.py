"""`client.prototype`: which models may be cloned, and clones that equal construction."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from client.prototype import clonable, clone


@dataclasses.dataclass(frozen=True)
class Spec:
    width: int
    weights: tuple[float, ...]


class Probe(nn.Module):
    def __init__(self, spec: Spec) -> None:
        super().__init__()
        self.spec = spec
        self.body = nn.Sequential(nn.Linear(spec.width, 3), nn.ReLU(), nn.Linear(3, 2))
        self.register_buffer("cw", torch.tensor(spec.weights))
        self.register_buffer("scale", torch.full((2,), 2.0), persistent=False)
        self.act = torch.relu
        self.optimizer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x)) * self.scale * self.cw


def test_a_clone_loaded_with_weights_equals_the_constructed_model():
    torch.manual_seed(0)
    model = Probe(Spec(4, (1.0, 0.5)))
    assert clonable(model)
    made = clone(Probe(Spec(4, (1.0, 0.5))))
    made.load_state_dict(model.state_dict())
    x = torch.randn(5, 4)
    assert torch.equal(made(x), model(x))
    assert torch.equal(made.scale, model.scale)  # a non-persistent buffer is copied, not loaded
    assert [type(m) for m in made.modules()] == [type(m) for m in model.modules()]
    assert made.spec == model.spec and made.body[0] is not model.body[0]
    made.body[0]._forward_hooks[1] = print  # registries are the clone's own
    assert not model.body[0]._forward_hooks


def _with(change) -> nn.Module:
    model = Probe(Spec(4, (1.0, 0.5)))
    change(model)
    return model


@pytest.mark.parametrize("change", [
    lambda m: setattr(m, "history", []),  # a mutable container
    lambda m: setattr(m, "q", torch.ones(2)),  # a plain tensor attribute
    lambda m: setattr(m, "fn", lambda x: m.body(x)),  # a closure over the model itself
    lambda m: setattr(m, "settings", {"widths": [4]}),  # a dict holding a mutable value
    lambda m: setattr(m, "twin", m.body),  # a submodule reached twice
    lambda m: setattr(m.body[2], "weight", m.body[0].weight),  # tied weights
    lambda m: m.register_forward_hook(lambda *a: None),  # a hook
])
def test_models_with_state_a_clone_would_share_or_lose_are_not_clonable(change):
    assert clonable(_with(lambda m: setattr(m, "settings", {"width": 4})))  # copied per clone
    assert not clonable(_with(change))
