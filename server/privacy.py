"""Central differential privacy for a federated run: Flower's wrapper plus an ε per round.

With ``dp-noise > 0`` the run's strategy is wrapped in Flower's
``DifferentialPrivacyClientSideFixedClipping``: every site clips its model update to
``dp-clip`` (`client.privacy.clip_if_requested`, training messages only) and the server
adds Gaussian noise of standard deviation ``dp-noise · dp-clip / sampled sites`` to the
aggregate. Flower's own accountant refuses strategies that override ``aggregate_train``
(ours weight sites by size or by method), so `PrivateStrategy` keeps an `RdpAccountant`
itself and composes, per released aggregate, the *effective* noise multiplier
``dp-noise / (sampled · max site weight)`` — equal to ``dp-noise`` for uniform weights and
full participation, smaller (more ε) when one site dominates the average. ε at ``dp-delta``
is appended to the history every round (metric ``dp_epsilon``, site ``all``), as client-
level DP over the population of sites (add-or-remove-one, no sampling amplification).

Arrays that no site changes (constant buffers such as the class weights the server fixes)
carry no client information and are released without noise: noising them would only
corrupt the loss. The accounting assumes each method aggregates by a weighted average of
the (clipped) site models, as `strategies.federated.FedMammoStrategy` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_stdv
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from server.history import ALL_SITES
from strategies.federated import FederatedSettings, FedMammoStrategy

log = logging.getLogger("fedmammo")
#: Seed of the server's noise; None (fresh OS entropy) except in tests: predictable noise is no privacy.
NOISE_SEED: int | None = None


class PrivateStrategy(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side-clipping DP wrapper around a `FedMammoStrategy`, with ε per round.

    Parameters
    ----------
    strategy : FedMammoStrategy
        The method's strategy (its history receives the ``dp_epsilon`` rows).
    noise_multiplier, clipping_norm : float
        Gaussian noise multiplier (> 0) and the sites' update clipping norm (> 0).
    delta : float
        δ at which ε is reported.
    """

    def __init__(self, strategy: FedMammoStrategy, noise_multiplier: float, clipping_norm: float,
                 delta: float) -> None:
        sites = strategy.plan.sites
        k = max(1, round(len(sites) * strategy.plan.settings.fraction_train))
        super().__init__(strategy, noise_multiplier, clipping_norm, k)
        self.inner = strategy
        self.population = len(sites)
        self.accountant = None  # Flower's check needs FedAvg.aggregate_train; see module doc
        self.rdp = RdpAccountant(PrivacyConfig(
            target_delta=delta, population_size=len(sites),
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION))
        self._sent: dict[str, np.ndarray] = {}
        self._frozen: set[str] = set()
        self.rng = np.random.default_rng(NOISE_SEED)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send the clipping norm in every site's own train config."""
        self._sent = {k: v.numpy() for k, v in arrays.items()}
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for msg in messages:  # FedMammoStrategy builds one config per site, not from ``config``
            msg.content["config"][KEY_CLIPPING_NORM] = self.clipping_norm
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate with noise, then compose this release and record ε."""
        replies = list(replies)
        valid = sorted((r for r in replies if not r.has_error()),
                       key=lambda r: self.inner.plan.node_to_site[r.metadata.src_node_id])
        self._frozen = _unchanged(self._sent, [r.content["arrays"] for r in valid])
        # A site that failed or vanished is left out (and marked missing by the inner
        # strategy) rather than voiding the round as Flower's wrapper would.
        arrays, metrics = super().aggregate_train(server_round, valid)
        if arrays is not None:
            sites = [self.inner.plan.node_to_site[r.metadata.src_node_id] for r in valid]
            weights = self.inner.aggregation_weights(sites, [r.content["metrics"] for r in valid])
            eps = self.compose(float(np.max(weights / weights.sum())))
            # Flushed into this round's history by FedMammoStrategy.aggregate_evaluate.
            self.inner._pending_rows.append({"site": ALL_SITES, "metric": "dp_epsilon", "value": eps})
        return arrays, metrics

    def compose(self, max_weight: float) -> float:
        """Account one release whose largest site weight is ``max_weight``; cumulative ε."""
        z_eff = self.noise_multiplier / (self.num_sampled_clients * max_weight)
        self.rdp.compose(GaussianPrivacyEvent(noise_multiplier=z_eff, sample_size=self.num_sampled_clients,
                                              population_size=self.population))
        spent = self.rdp.get_privacy_spent()
        log.info("privacy spent after %d releases: epsilon=%.4f at delta=%g", spent.num_releases,
                 spent.epsilon, spent.delta)
        return float(spent.epsilon)

    def _add_noise_to_aggregated_arrays(self, aggregated_arrays: ArrayRecord) -> ArrayRecord:
        """Gaussian noise on every array a site changed (floating point); the rest as sent."""
        stdv = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        out = {}
        for name, arr in aggregated_arrays.items():
            value = np.array(arr.numpy(), copy=True)
            if name not in self._frozen and np.issubdtype(value.dtype, np.floating):
                value += self.rng.normal(0.0, stdv, value.shape).astype(value.dtype)
            out[name] = Array(value)
        return ArrayRecord(out)


def _unchanged(sent: dict[str, np.ndarray], replies: list[ArrayRecord]) -> set[str]:
    """Names of arrays every reply returned exactly as sent."""
    return {name for name, value in sent.items()
            if all(name in r and np.array_equal(r[name].numpy(), value) for r in replies)}


def privatize(strategy: FedMammoStrategy, s: FederatedSettings) -> Strategy:
    """``strategy`` wrapped for DP when ``s.dp_noise > 0``, else ``strategy`` itself.

    Parameters
    ----------
    strategy : FedMammoStrategy
        The method's strategy.
    s : FederatedSettings
        Reads ``dp_noise``, ``dp_clip`` and ``dp_delta``.

    Returns
    -------
    Strategy
        What the server runs.
    """
    if s.dp_noise < 0 or (s.dp_noise > 0 and s.dp_clip <= 0) or not 0 < s.dp_delta < 1:
        raise ValueError(f"run config: dp-noise must be >= 0, dp-clip > 0 and 0 < dp-delta < 1; got "
                         f"dp-noise={s.dp_noise}, dp-clip={s.dp_clip}, dp-delta={s.dp_delta}")
    if s.dp_noise == 0:
        return strategy
    return PrivateStrategy(strategy, s.dp_noise, s.dp_clip, s.dp_delta)
