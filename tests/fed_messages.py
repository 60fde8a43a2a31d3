"""Hand-built Flower messages for the federated server-side tests.

Used by `test_fed_strategies` and `test_fed_classics`; a test module that imports
`task_identity` gets it as an autouse fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies.base import Batch, weighted_cross_entropy
from strategies.federated import FederatedSettings, FederationPlan

SITES = ("A", "B", "C")
NODES = {"A": 1101, "B": 2202, "C": 3303}


@pytest.fixture(autouse=True)
def task_identity():
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
