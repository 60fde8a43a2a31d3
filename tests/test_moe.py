"""MOE: gate and mixture against direct numpy computations; the gate learns routing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from strategies.base import Batch, TaskSpec
from strategies.moe import MoE, MoEConfig

D, C, E = 6, 3, 4


def make_model(seed: int = 0, **config: float) -> MoE:
    torch.manual_seed(seed)
    spec = TaskSpec(in_dim=D, n_classes=C, n_domains=E, class_weights=(1.0, 2.0, 0.5))
    return MoE(spec, MoEConfig(**config))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def params(layer: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
    return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()


def expert_probs(model: MoE, xn: np.ndarray) -> np.ndarray:
    """(n, E, C) softmax of each expert, one expert at a time."""
    w, b = params(model.experts)
    return np.stack([softmax(xn @ w[e].T + b[e]) for e in range(E)], axis=1)


def test_gate_is_a_distribution_per_sample() -> None:
    alpha = make_model().gate(torch.randn(10, D) * 3)
    assert alpha.shape == (10, E)
    assert torch.all(alpha >= 0)
    assert torch.allclose(alpha.sum(dim=1), torch.ones(10), atol=1e-6)


def test_forward_is_log_of_alpha_weighted_expert_probabilities() -> None:
    model = make_model()
    x = torch.randn(8, D)
    out = model(x)
    assert out.shape == (8, C)
    assert torch.allclose(out.exp().sum(dim=1), torch.ones(8), atol=1e-6)
    xn = x.double().numpy()
    wg, bg = params(model.router)
    alpha = softmax(xn @ wg.T + bg)
    experts = expert_probs(model, xn)
    expected = np.einsum("ne,nec->nc", alpha, experts)
    np.testing.assert_allclose(out.exp().detach().numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("e", range(E))
def test_one_hot_gate_gives_that_experts_softmax(e: int) -> None:
    model = make_model()
    with torch.no_grad():
        model.router.weight.zero_()
        model.router.bias.zero_()
        model.router.bias[e] = 60.0  # the other gates are ~e^-60
    x = torch.randn(5, D)
    w, b = params(model.experts)
    expected = softmax(x.double().numpy() @ w[e].T + b[e])
    np.testing.assert_allclose(model(x).exp().detach().numpy(), expected, atol=1e-6)


def test_objective_components_by_hand() -> None:
    model = make_model(lambda_gate=0.5, lambda_expert=2.0)
    x, y, d = torch.randn(6, D), torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 2, 3, 0, 1])
    loss, logs = model.objective(Batch(x, y, d, d))
    xn, yn, dn, w = x.double().numpy(), y.numpy(), d.numpy(), np.array([1.0, 2.0, 0.5])
    wg, bg = params(model.router)
    alpha = softmax(xn @ wg.T + bg)
    experts = expert_probs(model, xn)
    rows = np.arange(6)
    mix = np.einsum("ne,nec->nc", alpha, experts)
    mixture = np.mean(w[yn] * -np.log(mix[rows, yn]))
    gate = np.mean(-np.log(alpha[rows, dn]))
    expert = np.mean(w[yn] * -np.log(experts[rows, dn, yn]))
    assert logs["mixture"] == pytest.approx(mixture, rel=1e-5)
    assert logs["gate"] == pytest.approx(gate, rel=1e-5)
    assert logs["expert"] == pytest.approx(expert, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(mixture + 0.5 * gate + 2.0 * expert, rel=1e-5)
    assert logs["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)


def test_gate_learns_to_route_each_site_to_its_expert() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 400
    domain = torch.randint(0, E, (n,), generator=gen)
    centres = 4.0 * torch.eye(E, D)  # sites sit on separate axes of feature space
    x = centres[domain] + torch.randn(n, D, generator=gen)
    y = torch.randint(0, C, (n,), generator=gen)
    model = make_model(seed=1)
    model.configure_optimizer(1e-2)
    for _ in range(100):
        idx = torch.randint(0, n, (32,), generator=gen)
        model.update(Batch(x[idx], y[idx], domain[idx], domain[idx]))
    routed = (model.gate(x).argmax(dim=1) == domain).float().mean().item()
    assert routed > 0.9


def test_three_updates_and_shapes() -> None:
    model = make_model()
    model.configure_optimizer(1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        d = torch.randint(0, E, (16,))
        logs = model.update(Batch(torch.randn(16, D), torch.randint(0, C, (16,)), d, d))
        assert set(logs) >= {"loss", "mixture", "gate", "expert"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert model.expert_logits(torch.randn(7, D)).shape == (7, E, C)
    assert model(torch.randn(7, D)).shape == (7, C)
    assert model.experts.weight.shape == (E, C, D)
    assert MoE.label == "MOE" and MoE.name == "moe"
