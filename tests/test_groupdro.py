"""GroupDRO against hand computations and a scipy (SLSQP) projection oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from strategies.base import Batch, TaskSpec
from strategies.groupdro import (
    GroupDRO,
    GroupDROConfig,
    GroupWeights,
    drfa_step,
    project_to_simplex,
    update_group_weights,
)

# Every row of the tiny batch gets logits (0, log 3): p = (1/4, 3/4).
CE0, CE1 = math.log(4.0), math.log(4.0 / 3.0)
W = (1.0, 2.0)


def make_model(n_groups: int = 3, eta: float = 0.01) -> GroupDRO:
    spec = TaskSpec(in_dim=2, n_classes=2, n_domains=n_groups, class_weights=W)
    model = GroupDRO(spec, GroupDROConfig(eta=eta))
    with torch.no_grad():
        model.linear.weight.zero_()
        model.linear.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    return model


def batch(y: list[int], group: list[int]) -> Batch:
    n = len(y)
    g = torch.tensor(group)
    return Batch(torch.randn(n, 2), torch.tensor(y), g.clamp(min=0), g)


def test_update_group_weights_hand_computed() -> None:
    q, losses, eta = [0.5, 0.25, 0.25], [1.0, 2.0, 0.5], 0.01
    raw = [qi * math.exp(eta * li) for qi, li in zip(q, losses, strict=True)]
    expected = [r / sum(raw) for r in raw]
    got = update_group_weights(torch.tensor(q, dtype=torch.float64), torch.tensor(losses),
                               torch.ones(3, dtype=torch.bool), eta)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)


def test_absent_groups_keep_relative_weight() -> None:
    q = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    present = torch.tensor([True, False, True, False])
    got = update_group_weights(q, torch.tensor([1.0, 9.0, 3.0, 9.0]), present, eta=0.5)
    raw = [0.4 * math.exp(0.5), 0.3, 0.2 * math.exp(1.5), 0.1]
    assert got.tolist() == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)
    assert float(got[1] / got[3]) == pytest.approx(3.0, rel=1e-12)


def test_loss_is_q_weighted_group_losses_by_hand() -> None:
    model = make_model()
    model.group_weights.load_state_dict({"q": torch.tensor([0.5, 0.25, 0.25])})
    b = batch(y=[0, 1, 1, 0, 0], group=[0, 0, 1, 2, 2])
    loss, logs = model.objective(b)
    group_losses = [(CE0 + 2 * CE1) / 2, 2 * CE1, CE0]
    raw = [q * math.exp(0.01 * g) for q, g in zip([0.5, 0.25, 0.25], group_losses, strict=True)]
    q_new = [r / sum(raw) for r in raw]
    expected = sum(q * g for q, g in zip(q_new, group_losses, strict=True))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert logs["loss"] == pytest.approx(expected, rel=1e-6)
    assert logs["worst_group"] == pytest.approx(CE0, rel=1e-6)
    assert model.group_weights.weights.tolist() == pytest.approx(q_new, rel=1e-9)


def test_unknown_group_rows_are_excluded() -> None:
    with_unknown, without = make_model(), make_model()
    loss_a, _ = with_unknown.objective(batch(y=[0, 1, 1, 1, 1], group=[0, 1, -1, -1, -1]))
    loss_b, _ = without.objective(batch(y=[0, 1], group=[0, 1]))
    assert float(loss_a.detach()) == pytest.approx(float(loss_b.detach()), rel=1e-6)
    assert torch.allclose(with_unknown.group_weights.weights, without.group_weights.weights)
    # Only absent groups: q untouched, and the loss is zero.
    model = make_model()
    loss, _ = model.objective(batch(y=[0, 1], group=[-1, -1]))
    assert float(loss.detach()) == 0.0
    assert model.group_weights.weights.tolist() == pytest.approx([1 / 3] * 3)


def test_eval_mode_does_not_move_q() -> None:
    model = make_model().eval()
    model.objective(batch(y=[0, 1], group=[0, 1]))
    assert model.group_weights.weights.tolist() == pytest.approx([1 / 3] * 3)


def slsqp_projection(v: np.ndarray, floor: float) -> np.ndarray:
    cons = {"type": "eq", "fun": lambda x: x.sum() - 1.0}
    res = minimize(lambda x: 0.5 * np.sum((x - v) ** 2), np.full(v.size, 1 / v.size), jac=lambda x: x - v,
                   bounds=[(floor, None)] * v.size, constraints=[cons], method="SLSQP",
                   options={"ftol": 1e-14, "maxiter": 500})
    assert res.success
    return res.x


def test_project_to_simplex_hand_case() -> None:
    # Shift by 0.1 -> project (0.9, 0.4, -1.1) onto mass 0.7: threshold 0.3.
    assert project_to_simplex([1.0, 0.5, -1.0], floor=0.1) == pytest.approx([0.7, 0.2, 0.1], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("floor", [0.0, 1e-3, 0.05])
def test_project_to_simplex_matches_slsqp(seed: int, floor: float) -> None:
    v = np.random.default_rng(seed).normal(scale=2.0, size=6)
    got = project_to_simplex(v, floor)
    assert got.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(got >= floor - 1e-15)
    np.testing.assert_allclose(got, slsqp_projection(v, floor), atol=1e-6)


def test_project_to_simplex_fixes_feasible_points_and_rejects_big_floor() -> None:
    p = np.array([0.2, 0.3, 0.5])
    np.testing.assert_allclose(project_to_simplex(p, 0.1), p, atol=1e-15)
    with pytest.raises(ValueError):
        project_to_simplex(np.zeros(4), floor=0.3)


def test_drfa_step_hand_examples() -> None:
    # No entry reaches the floor: subtract the excess (1.35 - 1) evenly.
    got = drfa_step([0.5, 0.3, 0.2], [1.0, 2.0, 0.5], gamma=0.1)
    assert got == pytest.approx([0.6 - 0.35 / 3, 0.5 - 0.35 / 3, 0.25 - 0.35 / 3], abs=1e-12)
    # One client dominates: the others sit exactly on the floor.
    got = drfa_step([0.9, 0.05, 0.05], [5.0, 0.0, 0.0], gamma=1.0, floor=1e-3)
    assert got == pytest.approx([0.998, 0.001, 0.001], abs=1e-12)


def test_group_weights_state_dict_round_trip() -> None:
    a = GroupWeights(3, eta=0.01)
    a.update(torch.tensor([1.0, 3.0, 2.0]), torch.tensor([True, True, False]))
    b = GroupWeights(3, eta=0.01)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.weights, b.weights)
    state = a.state_dict()
    state["q"][0] = 7.0  # a copy: editing it must not touch a
    assert float(a.weights[0]) != 7.0
    with pytest.raises(ValueError):
        GroupWeights(4, eta=0.01).load_state_dict(a.state_dict())


def test_three_updates_and_prediction_shape() -> None:
    torch.manual_seed(0)
    spec = TaskSpec(in_dim=5, n_classes=3, n_domains=2, class_weights=(1.0,) * 3)
    model = GroupDRO(spec, GroupDROConfig())
    model.configure_optimizer(1e-2)
    before = model.linear.weight.detach().clone()
    for _ in range(3):
        d = torch.randint(0, 2, (16,))
        logs = model.update(Batch(torch.randn(16, 5), torch.randint(0, 3, (16,)), d, d))
        assert set(logs) >= {"loss", "wce", "worst_group"}
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert not torch.equal(before, model.linear.weight)
    assert model.group_weights.weights.sum().item() == pytest.approx(1.0)
    assert model(torch.randn(7, 5)).shape == (7, 3)
    assert GroupDRO.label == "GroupDRO" and GroupDRO.name == "groupdro"
