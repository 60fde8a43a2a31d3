"""Federated server sides: GroupDRO/DRFA and MoE, and every federated method end to end.

Oracles are independent of the code under test: hand computations with explicit numbers
and ``math.exp``, and strategy runs on hand-built Flower reply messages (`fed_messages`).
The fair-FL classics' server sides: `test_fed_classics`.
"""

from __future__ import annotations

import json
import math

import fed_messages as fx
import numpy as np
import pytest
import torch

from strategies.base import Batch, TaskSpec, get_method
from strategies.feddg_ga import FedDGGAStrategy
from strategies.groupdro import (
    GroupDRO,
    GroupDROConfig,
    GroupDROStrategy,
    count_weights,
    drfa_gamma,
    drfa_step,
    eg_step,
    server_weights_step,
)
from strategies.moe import MoEStrategy

task_identity = fx.task_identity  # an autouse fixture: bound here to apply here


# -- GroupDRO / DRFA: pure functions --------------------------------------------------------
def test_eg_step_hand_computed() -> None:
    lam, losses, eta = [0.5, 0.3, 0.2], [1.0, 2.0, 0.5], 0.1
    raw = [0.5 * math.exp(0.1), 0.3 * math.exp(0.2), 0.2 * math.exp(0.05)]
    assert eg_step(lam, losses, eta) == pytest.approx([r / sum(raw) for r in raw], rel=1e-12)


def test_server_step_keeps_absent_sites_and_shares_mass() -> None:
    lam = np.array([0.4, 0.3, 0.2, 0.1])
    present = np.array([True, False, True, False])
    losses = np.array([1.0, 9.0, 3.0, 9.0])
    got = server_weights_step(lam, present, losses, lambda q, ell: eg_step(q, ell, 0.5))
    raw = [0.4 * math.exp(0.5), 0.2 * math.exp(1.5)]
    expected = [0.6 * raw[0] / sum(raw), 0.3, 0.6 * raw[1] / sum(raw), 0.1]
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    # DRFA on three of four sites: (0.25, 0.25, 0.25) + 0.1 (1, 2, 0.5) = (0.35, 0.45, 0.30),
    # projected onto mass 0.75: subtract the excess 0.35 evenly.
    present = np.array([True, True, True, False])
    got = server_weights_step(np.full(4, 0.25), present, np.array([1.0, 2.0, 0.5, 0.0]),
                              lambda q, ell: drfa_step(q, ell, 0.1, total=q.sum()))
    assert got.tolist() == pytest.approx([0.35 - 0.35 / 3, 0.45 - 0.35 / 3, 0.30 - 0.35 / 3, 0.25], abs=1e-12)


def test_drfa_schedule_and_start() -> None:
    assert drfa_gamma(1, 0.1, 0.9) == pytest.approx(0.1)
    assert drfa_gamma(3, 0.1, 0.9) == pytest.approx(0.1 * 0.81)
    assert count_weights([10, 30, 60]).tolist() == pytest.approx([0.1, 0.3, 0.6], abs=1e-12)
    assert count_weights([1, 1e6]).tolist() == pytest.approx([1e-3, 1 - 1e-3], abs=1e-12)


def test_server_rule_is_validated() -> None:
    with pytest.raises(ValueError, match="server_rule"):
        GroupDROConfig(server_rule="adam")


def test_federated_groupdro_client_minimises_its_plain_local_risk() -> None:
    spec = TaskSpec(in_dim=4, n_classes=2, n_domains=3, class_weights=(1.0, 3.0))
    torch.manual_seed(0)
    model = GroupDRO(spec, GroupDROConfig())
    b = Batch(torch.randn(8, 4), torch.tensor([0, 1] * 4), torch.full((8,), 2), torch.full((8,), 2))
    q0 = model.group_weights.weights.clone()
    _, logs = model.objective(b)  # pooled: q moves, loss = q_2 L_2 with q_2 < 1
    assert logs["loss"] < fx.wce(model, b)
    model.group_weights.load_state_dict({"q": q0})
    model.begin_round({})
    _, logs = model.objective(b)
    assert logs["loss"] == pytest.approx(fx.wce(model, b))
    assert torch.equal(model.group_weights.weights, q0)


# -- GroupDRO: strategy on hand-built replies ------------------------------------------------
def test_groupdro_drfa_strategy_round_by_hand() -> None:
    strategy = GroupDROStrategy(fx.make_plan("groupdro"))
    rng = np.random.default_rng(0)
    msgs = fx.send(strategy, 1, fx.probe_arrays(rng))
    local = {s: fx.probe_arrays(rng) for s in fx.SITES}
    counts, losses = {"A": 10, "B": 30, "C": 60}, {"A": 1.0, "B": 2.0, "C": 0.5}
    replies = [fx.reply(msgs[s], local[s], counts[s], losses[s], train_loss=5.0) for s in ("C", "A", "B")]
    arrays, _ = strategy.aggregate_train(1, replies)
    # Start (0.1, 0.3, 0.6); + 0.1 (1, 2, 0.5) = (0.2, 0.5, 0.65); excess 0.35 removed evenly.
    lam = {"A": 0.2 - 0.35 / 3, "B": 0.5 - 0.35 / 3, "C": 0.65 - 0.35 / 3}
    assert fx.site_weights(strategy, 1) == pytest.approx(lam, abs=1e-12)
    for key in ("linear.weight", "linear.bias"):
        expected = sum(lam[s] * local[s][key] for s in fx.SITES)
        np.testing.assert_allclose(fx.as_numpy(arrays)[key], expected, atol=1e-12)
    # Round 2 without C: C keeps its weight; A, B share their mass 0.4667 with γ = 0.09:
    # (0.0833 + 0.27, 0.3833 + 0.09) = (0.3533, 0.4733), excess 0.36 removed evenly.
    msgs = fx.send(strategy, 2, fx.as_numpy(arrays))
    local = {s: fx.probe_arrays(rng) for s in fx.SITES}
    arrays, _ = strategy.aggregate_train(2, [fx.reply(msgs["A"], local["A"], 10, 3.0),
                                            fx.reply(msgs["B"], local["B"], 30, 1.0)])
    lam2 = {"A": lam["A"] + 0.27 - 0.18, "B": lam["B"] + 0.09 - 0.18, "C": lam["C"]}
    assert fx.site_weights(strategy, 2) == pytest.approx(lam2, abs=1e-12)
    expected = (lam2["A"] * local["A"]["linear.weight"] + lam2["B"] * local["B"]["linear.weight"]) / (
        lam2["A"] + lam2["B"])
    np.testing.assert_allclose(fx.as_numpy(arrays)["linear.weight"], expected, atol=1e-12)
    # The state survives JSON and restores into a fresh strategy.
    fresh = GroupDROStrategy(fx.make_plan("groupdro"))
    fresh.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert fx.site_weights(fresh, 2) == fx.site_weights(strategy, 2) and fresh.started


def test_groupdro_eg_strategy_starts_uniform() -> None:
    strategy = GroupDROStrategy(fx.make_plan("groupdro", server_rule="eg", server_eta=0.5))
    rng = np.random.default_rng(1)
    msgs = fx.send(strategy, 1, fx.probe_arrays(rng))
    losses = {"A": 1.0, "B": 2.0, "C": 0.5}
    strategy.aggregate_train(1, [fx.reply(msgs[s], fx.probe_arrays(rng), 50, losses[s]) for s in fx.SITES])
    raw = {s: math.exp(0.5 * loss) for s, loss in losses.items()}
    assert fx.site_weights(strategy, 1) == pytest.approx({s: r / sum(raw.values()) for s, r in raw.items()})


# -- MoE ------------------------------------------------------------------------------------
def moe_arrays(rng: np.random.Generator, d: int = 4, c: int = 2) -> dict[str, np.ndarray]:
    e = len(fx.SITES)
    return {"router.weight": rng.normal(size=(e, d)).astype(np.float32),
            "router.bias": rng.normal(size=e).astype(np.float32),
            "experts.weight": rng.normal(size=(e, c, d)).astype(np.float32),
            "experts.bias": rng.normal(size=(e, c)).astype(np.float32),
            "class_weights": np.ones(c, dtype=np.float32)}


def test_moe_experts_from_their_site_gate_by_examples() -> None:
    strategy = MoEStrategy(fx.make_plan("moe"))
    rng = np.random.default_rng(2)
    msgs = fx.send(strategy, 1, moe_arrays(rng))
    local = {s: moe_arrays(rng) for s in fx.SITES}
    n = {"A": 10, "B": 30, "C": 60}
    arrays, _ = strategy.aggregate_train(1, [fx.reply(msgs[s], local[s], n[s], 1.0) for s in ("B", "C", "A")])
    got = fx.as_numpy(arrays)
    for e, s in enumerate(fx.SITES):
        np.testing.assert_array_equal(got["experts.weight"][e], local[s]["experts.weight"][e])
        np.testing.assert_array_equal(got["experts.bias"][e], local[s]["experts.bias"][e])
    for key in ("router.weight", "router.bias"):
        expected = (10 * local["A"][key] + 30 * local["B"][key] + 60 * local["C"][key]) / 100
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-6)
        assert got[key].dtype == np.float32
    # Round 2 without B (domain 1): its expert stays as sent; the gate averages A and C.
    sent = got
    msgs = fx.send(strategy, 2, sent)
    local = {s: moe_arrays(rng) for s in fx.SITES}
    arrays, _ = strategy.aggregate_train(2, [fx.reply(msgs[s], local[s], n[s], 1.0) for s in ("A", "C")])
    got = fx.as_numpy(arrays)
    np.testing.assert_array_equal(got["experts.weight"][1], sent["experts.weight"][1])
    np.testing.assert_array_equal(got["experts.bias"][1], sent["experts.bias"][1])
    np.testing.assert_array_equal(got["experts.weight"][2], local["C"]["experts.weight"][2])
    expected = (10 * local["A"]["router.weight"] + 60 * local["C"]["router.weight"]) / 70
    np.testing.assert_allclose(got["router.weight"], expected, rtol=1e-6, atol=1e-6)


# -- end to end through the in-process federation --------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from sim.runner import write_synthetic_store
    from sim.sites import load_sites

    return write_synthetic_store(tmp_path_factory.mktemp("store"), load_sites(), ["medclip"], 0.05, 0,
                                 show_progress=False)


@pytest.mark.parametrize("method", ["fedprox", "qffl", "feddg_ga", "groupdro", "moe"])
def test_two_rounds_in_process(method: str, store, tmp_path) -> None:
    from server.app import FederatedSettings
    from sim.federated import run_inprocess
    from sim.sites import load_sites

    settings = FederatedSettings(store=str(store), fm="medclip", task="density", method=method,
                                 sites=tuple(s.name for s in load_sites()), out=str(tmp_path / "out"),
                                 num_rounds=2, local_epochs=1)
    history = run_inprocess(settings)
    f1 = history[history.metric == "f1_mean"]
    assert sorted(f1["round"].tolist()) == [1, 2]
    assert np.isfinite(f1["value"]).all()
    if get_method(method).__dict__.get("strategy_cls") in (GroupDROStrategy, FedDGGAStrategy):
        weights = history[history.metric == "site_weight"]
        sums = weights.groupby("round")["value"].sum()
        assert sorted(sums.index.tolist()) == [1, 2]
        np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
        n_train_sites = (history[(history.metric == "train_loss") & (history["round"] == 1)]).shape[0]
        assert weights.groupby("round").size().tolist() == [n_train_sites] * 2
