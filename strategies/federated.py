"""The server side every method shares: FedAvg over sites, with per-round fairness.

`FedMammoStrategy` subclasses Flower's Message-API `FedAvg` (Flower's
``serverapp/strategy/fedavg.py``) and overrides only what a site-aware study needs:

* sampling *by site* with a seed, and a per-node copy of the train config (each client
  gets its domain index and the global class weights);
* replies sorted by site before summing, so a run is reproducible bit for bit;
* after every round, the clients' confusion counts become history rows (per-site F1,
  worst site, mean ± sd, EOD/AOD per group kind) and missing sites are marked.

A method changes the aggregation through three small hooks: `aggregation_weights`
(who counts how much), `aggregate_arrays` (how arrays combine) and `observe_train`
(server state updated from the clients' reports), plus `state_dict` for checkpoints.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from client.payload import array_numpy, decode_counts, numpy_record
from client.records import record_dict, with_entries
from client.schema import task_classes
from server.history import ALL_SITES, RoundRows, RunKey, round_rows
from sim.config import build
from strategies.base import MethodConfig, get_method
from strategies.replies import valid_replies


@dataclass(frozen=True)
class FederatedSettings:
    """One federated run: data, method and schedule (flat, like Flower's run_config)."""

    store: str
    fm: str
    task: str
    method: str
    sites: tuple[str, ...]
    out: str
    num_rounds: int = 5
    local_epochs: int = 1
    local_steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    fraction_train: float = 1.0
    fault_rate: float = 0.0
    resume: bool = False
    timeout: float = 600.0
    method_overrides: dict[str, object] = field(default_factory=dict)
    #: Central DP (server/privacy.py): noise multiplier (0 = off), update clip norm, δ for ε.
    dp_noise: float = 0.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    #: Nodes to wait for before starting (0 = one per site), within ``timeout`` seconds.
    min_nodes: int = 0
    #: Checkpoint after a round only if this many seconds passed since the last checkpoint
    #: (the last round always): a crash loses at most that much work. 0 = every round.
    checkpoint_every_s: float = 1.0


@dataclass
class FederationPlan:
    """The run's settings plus what discovery found.

    That is: which node serves which training site, each site's domain index, and the
    global class weights.
    """

    settings: FederatedSettings
    node_to_site: dict[int, str]
    domains: dict[str, int]
    class_weights: tuple[float, ...]
    round_offset: int = 0

    @property
    def sites(self) -> list[str]:
        """Training sites, sorted."""
        return sorted(self.domains)

    def node_of(self, site: str) -> int:
        """The node id serving ``site``."""
        return next(n for n, s in self.node_to_site.items() if s == site)


def weighted_average(arrays: Sequence[dict[str, np.ndarray]], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Average each named array with ``weights`` (normalised here), in float64.

    Parameters
    ----------
    arrays : sequence of dict
        One ``{name: array}`` per client, in a fixed (site-sorted) order.
    weights : numpy.ndarray
        Non-negative weight per client.

    Returns
    -------
    dict
        ``{name: average}`` cast back to each array's dtype.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = {}
    for name, first in arrays[0].items():
        acc = sum(wi * a[name].astype(np.float64) for wi, a in zip(w, arrays, strict=True))
        out[name] = np.asarray(acc).astype(first.dtype)
    return out


class FedMammoStrategy(FedAvg):
    """FedAvg over sites with seeded site sampling and per-round fairness history.

    Parameters
    ----------
    plan : FederationPlan
        Sites, domains, class weights and the training schedule.
    on_round_end : callable, optional
        Called with the round number after each round's evaluation (checkpoints).
    """

    def __init__(self, plan: FederationPlan, on_round_end: Callable[[int], None] | None = None) -> None:
        n = len(plan.node_to_site)
        super().__init__(fraction_train=plan.settings.fraction_train, min_train_nodes=1, min_evaluate_nodes=1,
                         min_available_nodes=n)
        self.plan = plan
        self.on_round_end = on_round_end
        #: Each round's rows (`server.history.history_frame` makes them one DataFrame).
        self.history: list[RoundRows | pd.DataFrame] = []
        self.train_sites: dict[int, list[str]] = {}
        self._pending_rows: list[dict[str, object]] = []
        self.current_arrays: ArrayRecord | None = None
        #: The global model sent in this round's training messages, as numpy arrays.
        self.sent_arrays: dict[str, np.ndarray] = {}
        self._base_record: tuple[int, ConfigRecord] = (-1, ConfigRecord())

    @property
    def method_config(self) -> MethodConfig:
        """The method's config with the run's overrides (what every client builds)."""
        cls = get_method(self.plan.settings.method).config_cls
        return build(cls, self.plan.settings.method_overrides, "method-config")

    # -- hooks a method overrides ------------------------------------------------------
    def aggregation_weights(self, sites: list[str], metrics: list[MetricRecord]) -> np.ndarray:
        """Weight of each replying site in the average: its number of examples (FedAvg)."""
        return np.array([float(m["num-examples"]) for m in metrics])

    def aggregate_arrays(self, sites: list[str], arrays: list[dict[str, np.ndarray]],
                         weights: np.ndarray) -> dict[str, np.ndarray]:
        """Combine the clients' arrays (weighted average of every array)."""
        return weighted_average(arrays, weights)

    def observe_train(self, server_round: int, sites: list[str], metrics: list[MetricRecord]) -> None:
        """Update server-side state from the round's reports (nothing for FedAvg)."""

    def extra_train_config(self, server_round: int, site: str) -> dict[str, object]:
        """Per-site additions to the train config (nothing for FedAvg)."""
        return {}

    def state_dict(self) -> dict[str, object]:
        """Server-side strategy state for checkpoints (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore `state_dict`."""

    def round_rows(self, server_round: int) -> list[dict[str, object]]:
        """Extra history rows of a round (e.g. site weights); site, metric, value keys."""
        return []

    # -- Flower hooks ------------------------------------------------------------------
    def _round(self, server_round: int) -> int:
        return server_round + self.plan.round_offset

    def _base_config(self, server_round: int) -> dict[str, object]:
        p, s = self.plan, self.plan.settings
        rnd = self._round(server_round)
        return {
            "method": s.method, "fm": s.fm, "task": s.task, "n-domains": len(p.domains),
            "store": s.store, "sites": ",".join(s.sites),
            "class-weights": list(p.class_weights), "method-config": json.dumps(s.method_overrides),
            "local-epochs": s.local_epochs, "local-steps": s.local_steps, "batch-size": s.batch_size,
            "lr": s.lr, "seed": s.seed,
            "server-round": rnd, "progress-start": (rnd - 1) / s.num_rounds,
            "progress-end": rnd / s.num_rounds, "fault-rate": s.fault_rate,
        }

    def _messages(self, sites: Iterable[str], arrays: ArrayRecord, server_round: int,
                  kind: str) -> list[Message]:
        # Checked by Flower once per round (train and evaluate share it); each site's copy
        # adds (checked) only its own entries.
        if self._base_record[0] != server_round:
            self._base_record = (server_round, ConfigRecord(self._base_config(server_round)))
        out, base = [], self._base_record[1]
        for site in sites:
            own = {"domain": self.plan.domains[site]}
            if kind == MessageType.TRAIN:
                own |= self.extra_train_config(server_round, site)
            content = record_dict({"arrays": arrays, "config": with_entries(base, own)})
            out.append(Message(content=content, message_type=kind, dst_node_id=self.plan.node_of(site),
                               group_id=str(self._round(server_round))))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample sites with a per-round seed and send each its own config."""
        self.sent_arrays = {k: array_numpy(v) for k, v in arrays.items()}
        sites = self.plan.sites
        k = max(1, round(len(sites) * self.plan.settings.fraction_train))
        rng = random.Random(self.plan.settings.seed * 100_003 + self._round(server_round))
        chosen = sorted(rng.sample(sites, k)) if k < len(sites) else sites
        self.train_sites[self._round(server_round)] = chosen
        return self._messages(chosen, arrays, server_round, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every site evaluates the new global model on its test split."""
        self.current_arrays = arrays
        return self._messages(self.plan.sites, arrays, server_round, MessageType.EVALUATE)

    def _valid_by_site(self, replies: Iterable[Message], is_train: bool) -> list[tuple[str, Message]]:
        valid = valid_replies(replies, is_train, self.weighted_by_key)
        return sorted(((self.plan.node_to_site[m.metadata.src_node_id], m) for m in valid),
                      key=lambda t: t[0])

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sorted, hook-weighted aggregation; records per-site train losses."""
        got = self._valid_by_site(replies, is_train=True)
        rnd = self._round(server_round)
        expected = self.train_sites.get(rnd, self.plan.sites)
        rows = [{"site": s, "metric": "train_missing", "value": 1.0} for s in expected
                if s not in {site for site, _ in got}]
        if not got:
            self._pending_rows = rows
            return None, None
        sites = [s for s, _ in got]
        metrics = [m.content["metrics"] for _, m in got]
        self.observe_train(rnd, sites, metrics)
        arrays = [{k: array_numpy(v) for k, v in m.content["arrays"].items()} for _, m in got]
        merged = self.aggregate_arrays(sites, arrays, self.aggregation_weights(sites, metrics))
        rows += [{"site": s, "metric": "train_loss", "value": float(mr["train_loss"])}
                 for s, mr in zip(sites, metrics, strict=True)]
        self._pending_rows = rows + self.round_rows(rnd)
        n = sum(int(mr["num-examples"]) for mr in metrics)
        loss = sum(float(mr["train_loss"]) * int(mr["num-examples"]) for mr in metrics) / n
        return numpy_record(merged), MetricRecord(
            {"train_loss": loss, "num-sites": len(sites)})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Turn the clients' counts into this round's fairness history."""
        rnd = self._round(server_round)
        got = self._valid_by_site(replies, is_train=False)
        counts = [decode_counts(s, array_numpy(m.content["arrays"]["counts"])) for s, m in got]
        p = self.plan
        s = p.settings
        key = RunKey("federated", s.fm, s.task, s.method, ALL_SITES, rnd)
        missing = [s for s in p.sites if s not in {c.site for c in counts}]
        extra = self._pending_rows + [
            {"site": s, "metric": "eval_missing", "value": 1.0} for s in missing]
        extra.append({"site": ALL_SITES, "metric": "n_missing", "value": float(len(missing))})
        rows = round_rows(key, counts, task_classes(s.task), s.task, scalars=extra)
        self.history.append(rows)
        self._pending_rows = []
        if self.on_round_end is not None:
            self.on_round_end(rnd)
        return MetricRecord({"f1-mean": rows.value("f1_mean"), "n-missing": len(missing)})
