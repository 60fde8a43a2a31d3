"""Federated server sides of the fair-FL classics: FedProx, q-FFL and FedDG-GA.

Oracles are independent of the code under test: hand computations with explicit numbers,
a flat numpy re-implementation of q-FedAvg and Flower's own ``compute_delta_and_h``, and
strategy runs on hand-built Flower reply messages (`fed_messages`).
"""

from __future__ import annotations

import json

import fed_messages as fx
import numpy as np
import pytest
import torch
from flwr.serverapp.strategy.qfedavg import compute_delta_and_h

from strategies.base import Batch, TaskSpec
from strategies.feddg_ga import FedDGGAStrategy, ga_step_size, generalization_adjustment
from strategies.fedprox import FedProx, FedProxConfig, proximal_term
from strategies.qffl import QFFLStrategy, qfedavg_aggregate

task_identity = fx.task_identity  # an autouse fixture: bound here to apply here


# -- FedProx ----------------------------------------------------------------------------------
def test_proximal_term_by_hand_and_zero_when_pooled() -> None:
    params = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    anchor = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    assert float(proximal_term(params, anchor, 0.1)) == pytest.approx(0.05 * (1 + 4 + 4))
    assert float(proximal_term(params, None, 0.1)) == 0.0
    spec = TaskSpec(in_dim=3, n_classes=2, n_domains=1, class_weights=(1.0, 2.0))
    torch.manual_seed(0)
    model = FedProx(spec, FedProxConfig(mu=0.5))
    b = Batch(torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0]), torch.zeros(6, dtype=torch.long),
              torch.zeros(6, dtype=torch.long))
    _, logs = model.objective(b)  # pooled: no global model, Unified's loss
    assert logs["loss"] == pytest.approx(fx.wce(model, b))
    model.begin_round({})
    with torch.no_grad():
        model.linear.weight.add_(0.1)
        model.linear.bias.sub_(0.2)
    _, logs = model.objective(b)
    assert logs["prox"] == pytest.approx(0.25 * (6 * 0.01 + 2 * 0.04), rel=1e-5)
    assert logs["loss"] == pytest.approx(fx.wce(model, b) + logs["prox"], rel=1e-6)


# -- q-FFL --------------------------------------------------------------------------------------
def flat_qfedavg(w: np.ndarray, locals_: list[np.ndarray], losses: list[float], q: float,
                 lip: float) -> np.ndarray:
    """The q-FedAvg formula on flat vectors (Li et al. 2020)."""
    deltas, hs = [], []
    for wk, f in zip(locals_, losses, strict=True):
        f = f + 1e-10
        dw = lip * (w - wk)
        deltas.append(f**q * dw)
        hs.append(q * f ** (q - 1) * dw @ dw + lip * f**q)
    return w - np.sum(deltas, axis=0) / np.sum(hs)


@pytest.mark.parametrize("q", [0.1, 1.0, 2.5])
def test_qfedavg_matches_flat_formula_and_flower(q: float) -> None:
    rng = np.random.default_rng(3)
    shapes = {"a": (3, 4), "b": (4,), "c": (2, 2, 2)}
    glob = {k: rng.normal(size=s) for k, s in shapes.items()}
    locs = [{k: v + 0.01 * rng.normal(size=v.shape) for k, v in glob.items()} for _ in range(4)]
    losses = list(rng.uniform(0.2, 2.0, size=4))
    got = qfedavg_aggregate(glob, locs, losses, q, lipschitz=100.0)
    def flat(arrays):
        return np.concatenate([arrays[k].ravel() for k in shapes])

    oracle = flat_qfedavg(flat(glob), [flat(loc) for loc in locs], losses, q, 100.0)
    np.testing.assert_allclose(flat(got), oracle, rtol=1e-12, atol=1e-12)
    # Flower's own per-client terms give the same step.
    terms = [compute_delta_and_h([glob[k].copy() for k in shapes], [loc[k].copy() for k in shapes],
                                 q, 100.0, f) for loc, f in zip(locs, losses, strict=True)]
    sum_h = sum(h for _, h in terms)
    for i, k in enumerate(shapes):
        step = sum(d[i] for d, _ in terms) / sum_h
        np.testing.assert_allclose(got[k], glob[k] - step, rtol=1e-10, atol=1e-12)


def test_qfedavg_with_q_zero_is_the_plain_mean() -> None:
    rng = np.random.default_rng(4)
    glob = {"w": rng.normal(size=5).astype(np.float32)}
    locs = [{"w": rng.normal(size=5).astype(np.float32)} for _ in range(3)]
    got = qfedavg_aggregate(glob, locs, [0.3, 1.0, 3.0], 0.0, lipschitz=10.0)
    np.testing.assert_allclose(got["w"], np.mean([loc["w"] for loc in locs], axis=0), rtol=1e-5)
    assert got["w"].dtype == np.float32


def test_qffl_strategy_uses_global_loss_of_the_sent_model() -> None:
    strategy = QFFLStrategy(fx.make_plan("qffl", q=0.5))
    rng = np.random.default_rng(5)
    sent = fx.probe_arrays(rng)
    msgs = fx.send(strategy, 1, sent)
    local = {s: {k: v + 0.01 * rng.normal(size=v.shape) for k, v in sent.items()} for s in fx.SITES}
    glob_loss = {"A": 0.4, "B": 1.5, "C": 0.9}
    arrays, _ = strategy.aggregate_train(1, [fx.reply(msgs[s], local[s], 20, glob_loss[s], train_loss=0.01)
                                            for s in ("B", "A")])
    keys = list(sent)
    oracle = flat_qfedavg(np.concatenate([sent[k].ravel() for k in keys]),
                          [np.concatenate([local[s][k].ravel() for k in keys]) for s in ("A", "B")],
                          [0.4, 1.5], 0.5, 1 / 0.01)
    got = fx.as_numpy(arrays)
    np.testing.assert_allclose(np.concatenate([got[k].ravel() for k in keys]), oracle, rtol=1e-12, atol=1e-12)


# -- FedDG-GA -----------------------------------------------------------------------------------
def test_generalization_adjustment_hand_examples() -> None:
    # Gaps (0.5, 0.2, -0.1): centred (0.3, 0, -0.3), normalised (1, 0, -1).
    got = generalization_adjustment([1 / 3] * 3, [0.5, 0.2, -0.1], 0.2)
    assert got.tolist() == pytest.approx([1 / 3 + 0.2, 1 / 3, 1 / 3 - 0.2], abs=1e-12)
    # Gaps (0, 0.3, 0.9): centred (-0.4, -0.1, 0.5), normalised (-0.8, -0.2, 1);
    # (0.1, 0.3, 0.6) + 0.2 * that = (-0.06, 0.26, 0.8) -> clip (0, 0.26, 0.8) / 1.06.
    got = generalization_adjustment([0.1, 0.3, 0.6], [0.0, 0.3, 0.9], 0.2)
    assert got.tolist() == pytest.approx([0.0, 0.26 / 1.06, 0.8 / 1.06], abs=1e-12)
    assert generalization_adjustment([0.2, 0.8], [0.4, 0.4], 0.2).tolist() == [0.2, 0.8]


def test_ga_step_decays_linearly_and_scales_by_sites() -> None:
    assert ga_step_size(1, 5, 0.2, 10) == pytest.approx(0.02)
    assert ga_step_size(3, 5, 0.2, 10) == pytest.approx(0.02 * 0.6)
    assert ga_step_size(5, 5, 0.2, 4) == pytest.approx(0.05 * 0.2)


def test_feddg_ga_strategy_pairs_next_global_loss_with_local_loss() -> None:
    strategy = FedDGGAStrategy(fx.make_plan("feddg_ga", num_rounds=5))
    rng = np.random.default_rng(6)
    msgs = fx.send(strategy, 1, fx.probe_arrays(rng))
    strategy.aggregate_train(1, [fx.reply(msgs[s], fx.probe_arrays(rng), 20, 9.0, train_loss=0.5)
                                 for s in fx.SITES])
    assert fx.site_weights(strategy, 1) == pytest.approx({s: 1 / 3 for s in fx.SITES})  # no gap yet
    # Round 2: gaps = global-loss(round 2) - train_loss(round 1) = (0.5, 0.2, -0.1);
    # step 0.2 / 3 (K = 3, first update undecayed) on the normalised gaps (1, 0, -1).
    msgs = fx.send(strategy, 2, fx.probe_arrays(rng))
    local = {s: fx.probe_arrays(rng) for s in fx.SITES}
    g2 = {"A": 1.0, "B": 0.7, "C": 0.4}
    t2 = {"A": 0.6, "B": 0.1, "C": 0.3}  # this round's local losses: used in round 3 only
    replies = [fx.reply(msgs[s], local[s], 20, g2[s], train_loss=t2[s]) for s in fx.SITES]
    arrays, _ = strategy.aggregate_train(2, replies)
    a = {"A": 1 / 3 + 0.2 / 3, "B": 1 / 3, "C": 1 / 3 - 0.2 / 3}
    assert fx.site_weights(strategy, 2) == pytest.approx(a, abs=1e-12)
    expected = sum(a[s] * local[s]["linear.weight"] for s in fx.SITES)
    np.testing.assert_allclose(fx.as_numpy(arrays)["linear.weight"], expected, atol=1e-12)
    # Round 3 without C: gaps A 0.5 - 0.6 = -0.1, B 0.2 - 0.1 = 0.1 (pairing with this
    # round's train_loss 0.1 would favour A instead); A and B share their mass, C keeps it.
    msgs = fx.send(strategy, 3, fx.as_numpy(arrays))
    strategy.aggregate_train(3, [fx.reply(msgs[s], fx.probe_arrays(rng), 20, g, train_loss=0.1)
                                 for s, g in (("A", 0.5), ("B", 0.2))])
    step = 0.2 / 3 * (1 - 1 / 5)
    w3 = fx.site_weights(strategy, 3)
    assert w3["C"] == pytest.approx(a["C"], abs=1e-12)
    assert [w3["A"], w3["B"]] == pytest.approx([a["A"] - step, a["B"] + step], abs=1e-12)
    gaps = {r["site"]: r["value"] for r in strategy.round_rows(3) if r["metric"] == "generalization_gap"}
    assert gaps == pytest.approx({"A": -0.1, "B": 0.1})
    fresh = FedDGGAStrategy(fx.make_plan("feddg_ga"))
    fresh.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert fx.site_weights(fresh, 3) == w3 and fresh.last_train == strategy.last_train
