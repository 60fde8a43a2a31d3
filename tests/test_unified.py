"""Unified's hand-written update against autograd on its objective, step by step."""

from __future__ import annotations

import pytest
import torch

from strategies.base import Batch, Method, TaskSpec
from strategies.fedprox import FedProx, FedProxConfig
from strategies.unified import Unified, UnifiedConfig

D, C = 20, 4


def _spec() -> TaskSpec:
    return TaskSpec(in_dim=D, n_classes=C, n_domains=3, class_weights=(0.5, 1.0, 2.0, 1.5))


def _batch(n: int, seed: int) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen)
    y = torch.randint(0, C, (n,), generator=gen)
    domain = torch.randint(0, 3, (n,), generator=gen)
    return Batch(x, y, domain, domain.clone())


@pytest.mark.parametrize(("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 0.01), ("sgd", 0.001)])
def test_hand_written_update_follows_autograd_step_by_step(optimizer: str, weight_decay: float) -> None:
    # The oracle is the base class's update: autograd on `objective` (weighted CE).
    config = UnifiedConfig(optimizer=optimizer, weight_decay=weight_decay)
    models = []
    for _ in range(2):
        torch.manual_seed(5)
        models.append(Unified(_spec(), config))
        models[-1].configure_optimizer(0.05)
    fast, slow = models
    for step in range(20):
        b = _batch(n=1 if step == 4 else 9, seed=step)  # a one-row batch too
        got, want = fast.update(b), Method.update(slow, b)
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7)
    for p, q in zip(fast.parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_a_subclass_with_its_own_objective_keeps_autograd() -> None:
    # FedProx adds a proximal term: the probe-only gradient would silently drop it.
    models = []
    for _ in range(2):
        torch.manual_seed(1)
        m = FedProx(_spec(), FedProxConfig(mu=5.0))
        m.begin_round({})
        with torch.no_grad():
            m.linear.weight.add_(1.0)  # away from the anchor, so the term has a gradient
        m.configure_optimizer(0.1)
        models.append(m)
    for step in range(5):
        b = _batch(n=8, seed=step)
        models[0].update(b)
        Method.update(models[1], b)
    torch.testing.assert_close(models[0].linear.weight, models[1].linear.weight)
