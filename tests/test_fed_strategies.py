"""Federated server sides: GroupDRO/DRFA, MoE, FedProx, q-FFL and FedDG-GA.

Oracles are independent of the code under test: hand computations with explicit numbers
and ``math.exp``, a flat numpy re-implementation of q-FedAvg and Flower's own
``compute_delta_and_h``, and strategy runs on hand-built Flower reply messages.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.qfedavg import compute_delta_and_h
from flwr.supercore.task_identity import TaskIdentity

from strategies.base import Batch, TaskSpec, get_method, weighted_cross_entropy
from strategies.feddg_ga import FedDGGAStrategy, ga_step_size, generalization_adjustment
from strategies.federated import FederatedSettings, FederationPlan
from strategies.fedprox import FedProx, FedProxConfig, proximal_term
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
from strategies.qffl import QFFLStrategy, qfedavg_aggregate

SITES = ("A", "B", "C")
NODES = {"A": 1101, "B": 2202, "C": 3303}


# -- helpers ----------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _task_identity():
    """Message() reads the sender's identity from process-wide state (see sim.federated)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1


def make_plan(method: str, num_rounds: int = 5, **overrides: object) -> FederationPlan:
    settings = FederatedSettings(store="", fm="medclip", task="density", method=method,
                                 sites=tuple(SITES), out="", lr=0.01, num_rounds=num_rounds,
                                 method_overrides=dict(overrides))
    return FederationPlan(settings=settings, node_to_site={n: s for s, n in NODES.items()},
                          domains={s: d for d, s in enumerate(SITES)}, class_weights=(1.0, 1.0))


def send(strategy, rnd: int, arrays: dict[str, np.ndarray]) -> dict[str, Message]:
    """The strategy's train messages for round ``rnd``, by site."""
    msgs = strategy.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                                    ConfigRecord(), None)
    return {strategy.plan.node_to_site[m.metadata.dst_node_id]: m for m in msgs}


def reply(msg: Message, arrays: dict[str, np.ndarray], n: int, global_loss: float,
          train_loss: float = 1.0) -> Message:
    metrics = MetricRecord({"num-examples": n, "train_loss": train_loss, "global-loss": global_loss})
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": record, "metrics": metrics}), reply_to=msg)


def as_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def site_weights(strategy, rnd: int) -> dict[str, float]:
    return {r["site"]: r["value"] for r in strategy.round_rows(rnd) if r["metric"] == "site_weight"}


def wce(model, b: Batch) -> float:
    """The weighted CE of ``model`` on ``b`` (Unified's objective), without autograd."""
    with torch.no_grad():
        return float(weighted_cross_entropy(model(b.x), b.y, model.class_weights))


def probe_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"linear.weight": rng.normal(size=(2, 3)), "linear.bias": rng.normal(size=2)}


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
    assert logs["loss"] < wce(model, b)
    model.group_weights.load_state_dict({"q": q0})
    model.begin_round({})
    _, logs = model.objective(b)
    assert logs["loss"] == pytest.approx(wce(model, b))
    assert torch.equal(model.group_weights.weights, q0)


# -- GroupDRO: strategy on hand-built replies ------------------------------------------------
def test_groupdro_drfa_strategy_round_by_hand() -> None:
    strategy = GroupDROStrategy(make_plan("groupdro"))
    rng = np.random.default_rng(0)
    msgs = send(strategy, 1, probe_arrays(rng))
    local = {s: probe_arrays(rng) for s in SITES}
    counts, losses = {"A": 10, "B": 30, "C": 60}, {"A": 1.0, "B": 2.0, "C": 0.5}
    replies = [reply(msgs[s], local[s], counts[s], losses[s], train_loss=5.0) for s in ("C", "A", "B")]
    arrays, _ = strategy.aggregate_train(1, replies)
    # Start (0.1, 0.3, 0.6); + 0.1 (1, 2, 0.5) = (0.2, 0.5, 0.65); excess 0.35 removed evenly.
    lam = {"A": 0.2 - 0.35 / 3, "B": 0.5 - 0.35 / 3, "C": 0.65 - 0.35 / 3}
    assert site_weights(strategy, 1) == pytest.approx(lam, abs=1e-12)
    for key in ("linear.weight", "linear.bias"):
        expected = sum(lam[s] * local[s][key] for s in SITES)
        np.testing.assert_allclose(as_numpy(arrays)[key], expected, atol=1e-12)
    # Round 2 without C: C keeps its weight; A, B share their mass 0.4667 with γ = 0.09:
    # (0.0833 + 0.27, 0.3833 + 0.09) = (0.3533, 0.4733), excess 0.36 removed evenly.
    msgs = send(strategy, 2, as_numpy(arrays))
    local = {s: probe_arrays(rng) for s in SITES}
    arrays, _ = strategy.aggregate_train(2, [reply(msgs["A"], local["A"], 10, 3.0),
                                            reply(msgs["B"], local["B"], 30, 1.0)])
    lam2 = {"A": lam["A"] + 0.27 - 0.18, "B": lam["B"] + 0.09 - 0.18, "C": lam["C"]}
    assert site_weights(strategy, 2) == pytest.approx(lam2, abs=1e-12)
    expected = (lam2["A"] * local["A"]["linear.weight"] + lam2["B"] * local["B"]["linear.weight"]) / (
        lam2["A"] + lam2["B"])
    np.testing.assert_allclose(as_numpy(arrays)["linear.weight"], expected, atol=1e-12)
    # The state survives JSON and restores into a fresh strategy.
    fresh = GroupDROStrategy(make_plan("groupdro"))
    fresh.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert site_weights(fresh, 2) == site_weights(strategy, 2) and fresh.started


def test_groupdro_eg_strategy_starts_uniform() -> None:
    strategy = GroupDROStrategy(make_plan("groupdro", server_rule="eg", server_eta=0.5))
    rng = np.random.default_rng(1)
    msgs = send(strategy, 1, probe_arrays(rng))
    losses = {"A": 1.0, "B": 2.0, "C": 0.5}
    strategy.aggregate_train(1, [reply(msgs[s], probe_arrays(rng), 50, losses[s]) for s in SITES])
    raw = {s: math.exp(0.5 * loss) for s, loss in losses.items()}
    assert site_weights(strategy, 1) == pytest.approx({s: r / sum(raw.values()) for s, r in raw.items()})


# -- MoE ------------------------------------------------------------------------------------
def moe_arrays(rng: np.random.Generator, d: int = 4, c: int = 2) -> dict[str, np.ndarray]:
    e = len(SITES)
    return {"router.weight": rng.normal(size=(e, d)).astype(np.float32),
            "router.bias": rng.normal(size=e).astype(np.float32),
            "experts.weight": rng.normal(size=(e, c, d)).astype(np.float32),
            "experts.bias": rng.normal(size=(e, c)).astype(np.float32),
            "class_weights": np.ones(c, dtype=np.float32)}


def test_moe_experts_from_their_site_gate_by_examples() -> None:
    strategy = MoEStrategy(make_plan("moe"))
    rng = np.random.default_rng(2)
    msgs = send(strategy, 1, moe_arrays(rng))
    local = {s: moe_arrays(rng) for s in SITES}
    n = {"A": 10, "B": 30, "C": 60}
    arrays, _ = strategy.aggregate_train(1, [reply(msgs[s], local[s], n[s], 1.0) for s in ("B", "C", "A")])
    got = as_numpy(arrays)
    for e, s in enumerate(SITES):
        np.testing.assert_array_equal(got["experts.weight"][e], local[s]["experts.weight"][e])
        np.testing.assert_array_equal(got["experts.bias"][e], local[s]["experts.bias"][e])
    for key in ("router.weight", "router.bias"):
        expected = (10 * local["A"][key] + 30 * local["B"][key] + 60 * local["C"][key]) / 100
        np.testing.assert_allclose(got[key], expected, rtol=1e-6, atol=1e-6)
        assert got[key].dtype == np.float32
    # Round 2 without B (domain 1): its expert stays as sent; the gate averages A and C.
    sent = got
    msgs = send(strategy, 2, sent)
    local = {s: moe_arrays(rng) for s in SITES}
    arrays, _ = strategy.aggregate_train(2, [reply(msgs[s], local[s], n[s], 1.0) for s in ("A", "C")])
    got = as_numpy(arrays)
    np.testing.assert_array_equal(got["experts.weight"][1], sent["experts.weight"][1])
    np.testing.assert_array_equal(got["experts.bias"][1], sent["experts.bias"][1])
    np.testing.assert_array_equal(got["experts.weight"][2], local["C"]["experts.weight"][2])
    expected = (10 * local["A"]["router.weight"] + 60 * local["C"]["router.weight"]) / 70
    np.testing.assert_allclose(got["router.weight"], expected, rtol=1e-6, atol=1e-6)


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
    assert logs["loss"] == pytest.approx(wce(model, b))
    model.begin_round({})
    with torch.no_grad():
        model.linear.weight.add_(0.1)
        model.linear.bias.sub_(0.2)
    _, logs = model.objective(b)
    assert logs["prox"] == pytest.approx(0.25 * (6 * 0.01 + 2 * 0.04), rel=1e-5)
    assert logs["loss"] == pytest.approx(wce(model, b) + logs["prox"], rel=1e-6)


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
    strategy = QFFLStrategy(make_plan("qffl", q=0.5))
    rng = np.random.default_rng(5)
    sent = probe_arrays(rng)
    msgs = send(strategy, 1, sent)
    local = {s: {k: v + 0.01 * rng.normal(size=v.shape) for k, v in sent.items()} for s in SITES}
    glob_loss = {"A": 0.4, "B": 1.5, "C": 0.9}
    arrays, _ = strategy.aggregate_train(1, [reply(msgs[s], local[s], 20, glob_loss[s], train_loss=0.01)
                                            for s in ("B", "A")])
    keys = list(sent)
    oracle = flat_qfedavg(np.concatenate([sent[k].ravel() for k in keys]),
                          [np.concatenate([local[s][k].ravel() for k in keys]) for s in ("A", "B")],
                          [0.4, 1.5], 0.5, 1 / 0.01)
    got = as_numpy(arrays)
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
    strategy = FedDGGAStrategy(make_plan("feddg_ga", num_rounds=5))
    rng = np.random.default_rng(6)
    msgs = send(strategy, 1, probe_arrays(rng))
    strategy.aggregate_train(1, [reply(msgs[s], probe_arrays(rng), 20, 9.0, train_loss=0.5) for s in SITES])
    assert site_weights(strategy, 1) == pytest.approx({s: 1 / 3 for s in SITES})  # no gap yet
    # Round 2: gaps = global-loss(round 2) - train_loss(round 1) = (0.5, 0.2, -0.1);
    # step 0.2 / 3 (K = 3, first update undecayed) on the normalised gaps (1, 0, -1).
    msgs = send(strategy, 2, probe_arrays(rng))
    local = {s: probe_arrays(rng) for s in SITES}
    g2 = {"A": 1.0, "B": 0.7, "C": 0.4}
    t2 = {"A": 0.6, "B": 0.1, "C": 0.3}  # this round's local losses: used in round 3 only
    replies = [reply(msgs[s], local[s], 20, g2[s], train_loss=t2[s]) for s in SITES]
    arrays, _ = strategy.aggregate_train(2, replies)
    a = {"A": 1 / 3 + 0.2 / 3, "B": 1 / 3, "C": 1 / 3 - 0.2 / 3}
    assert site_weights(strategy, 2) == pytest.approx(a, abs=1e-12)
    expected = sum(a[s] * local[s]["linear.weight"] for s in SITES)
    np.testing.assert_allclose(as_numpy(arrays)["linear.weight"], expected, atol=1e-12)
    # Round 3 without C: gaps A 0.5 - 0.6 = -0.1, B 0.2 - 0.1 = 0.1 (pairing with this
    # round's train_loss 0.1 would favour A instead); A and B share their mass, C keeps it.
    msgs = send(strategy, 3, as_numpy(arrays))
    strategy.aggregate_train(3, [reply(msgs[s], probe_arrays(rng), 20, g, train_loss=0.1)
                                 for s, g in (("A", 0.5), ("B", 0.2))])
    step = 0.2 / 3 * (1 - 1 / 5)
    w3 = site_weights(strategy, 3)
    assert w3["C"] == pytest.approx(a["C"], abs=1e-12)
    assert [w3["A"], w3["B"]] == pytest.approx([a["A"] - step, a["B"] + step], abs=1e-12)
    gaps = {r["site"]: r["value"] for r in strategy.round_rows(3) if r["metric"] == "generalization_gap"}
    assert gaps == pytest.approx({"A": -0.1, "B": 0.1})
    fresh = FedDGGAStrategy(make_plan("feddg_ga"))
    fresh.load_state_dict(json.loads(json.dumps(strategy.state_dict())))
    assert site_weights(fresh, 3) == w3 and fresh.last_train == strategy.last_train


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
