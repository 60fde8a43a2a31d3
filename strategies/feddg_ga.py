r"""FedDG-GA: generalisation adjustment of the aggregation weights (Zhang et al. 2023).

Zhang, Gong, Liu, Chen & Ye, "Federated Domain Generalization with Generalization
Adjustment", CVPR 2023 (reference code MediaBrain-SJTU/FedDG-GA,
``utils/weight_adjust.py``). The clients are the plain linear probe with weighted CE
(Unified's objective); the server keeps one aggregation weight :math:`a_k` per training
site (uniform at the start) and moves weight towards the sites on which the global
model generalises worst:

1. generalisation gap of site *k* for the models of round *t*:
   :math:`G_k = F_k(w^t) - F_k(w_k^t)` — the loss of the aggregated global model
   minus the loss of site *k*'s own local model, both on site *k*'s data;
2. normalised gap :math:`\tilde G_k = (G_k - \bar G) / \max_j |G_j - \bar G|`
   (centred by the mean, so the step is zero-sum before clipping; the reference code
   divides the raw gaps by their largest magnitude without centring);
3. :math:`a_k \leftarrow a_k + d_t\,\tilde G_k`, clip at 0, renormalise
   (`generalization_adjustment`);
4. step :math:`d_t = \frac{d}{K}\,(1 - \frac{t-1}{R})` with d = 0.2, K training sites
   and R rounds: linear decay over rounds, and the reference code's 1/K factor (it
   multiplies the step by 1/3 for its three training domains, later by
   ``1/len(weight_dict)``), which keeps the step proportional to the uniform weight
   1/K — without it, d = 0.2 would zero every below-mean site of a ten-site federation
   in one round (`ga_step_size`).

Federated reading
-----------------
Each train reply carries ``train_loss`` = :math:`F_k(w_k^t)` (the local model after its
update, on its training rows) and ``global-loss`` = the loss of the global model the
client *received*. The global model aggregated at round *t* reaches the clients in
round *t + 1*, so its loss :math:`F_k(w^t)` arrives with the round-*t+1* replies. The
strategy therefore stores each site's ``train_loss`` and, at round *t + 1*, pairs it
with the new ``global-loss``: the gap is exactly the reference's (global model after
aggregation vs. local model before it, same round), and the updated weights aggregate
round *t + 1* — the reference's timing too (weights refined after round *t*'s
aggregation are used for round *t + 1*'s). Round 1 aggregates with uniform weights.
Only sites that replied in both rounds get a gap; the others keep their weight, and
the replying sites share their combined weight (as in `strategies.groupdro`).

Both losses are on the site's *training* rows (the reference evaluates on a held-out
validation split each site keeps; the clients here report no validation loss).
The weights are reported as ``site_weight`` history rows (and the gaps as
``generalization_gap``) and are checkpointed by `FedDGGAStrategy.state_dict`. The pooled
method is Unified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from flwr.app import MetricRecord

from strategies.base import MethodConfig, register
from strategies.federated import FederationPlan, FedMammoStrategy
from strategies.unified import Unified, UnifiedConfig


@dataclass(frozen=True)
class FedDGGAConfig(UnifiedConfig):
    """FedDG-GA hyperparameters.

    Attributes
    ----------
    ga_step : float
        Base step d of the weight adjustment: 0.2, the reference code's default; the
        step actually taken is ``ga_step / K`` decayed linearly over rounds
        (`ga_step_size`).
    """

    ga_step: float = 0.2


def ga_step_size(model_round: int, num_rounds: int, base: float, n_sites: int) -> float:
    r"""The step :math:`d_t = \frac{d}{K}(1 - \frac{t-1}{R})` for the gaps of round *t*.

    Parameters
    ----------
    model_round : int
        Round *t* whose models the gaps measure (1-based).
    num_rounds : int
        Total rounds R.
    base : float
        d (0.2 in the reference code).
    n_sites : int
        K, the number of training sites (the reference's ``len(weight_dict)``).

    Returns
    -------
    float
        The step; 0 once t > R.
    """
    return base / n_sites * max(0.0, 1.0 - (model_round - 1) / num_rounds)


def generalization_adjustment(weights: np.ndarray, gaps: np.ndarray, step: float) -> np.ndarray:
    r"""FedDG-GA's weight update from generalisation gaps (Zhang et al. 2023).

    Parameters
    ----------
    weights : array_like
        (K,) current aggregation weights :math:`a_k` (non-negative, any total mass).
    gaps : array_like
        (K,) gaps :math:`G_k` (global-model loss minus local-model loss).
    step : float
        :math:`d_t`.

    Returns
    -------
    numpy.ndarray
        float64 (K,) :math:`\max(0, a_k + d_t (G_k - \bar G)/\max_j|G_j - \bar G|)`,
        rescaled to the total mass of ``weights``; ``weights`` unchanged when all gaps
        are equal.
    """
    a = np.asarray(weights, dtype=np.float64)
    g = np.asarray(gaps, dtype=np.float64)
    centred = g - g.mean()
    scale = np.abs(centred).max() if centred.size else 0.0
    if scale == 0.0:
        return a.copy()
    new = np.clip(a + step * centred / scale, 0.0, None)
    # The site with the largest gap gains ``step`` > 0, so the total is positive.
    return new * (a.sum() / new.sum())


class FedDGGAStrategy(FedMammoStrategy):
    """FedAvg with FedDG-GA's generalisation-adjusted site weights.

    Parameters
    ----------
    plan : FederationPlan
        The federation; ``plan.settings.method_overrides`` fills `FedDGGAConfig`.
    on_round_end : callable, optional
        Passed to `FedMammoStrategy`.
    """

    def __init__(self, plan: FederationPlan, on_round_end: Callable[[int], None] | None = None) -> None:
        super().__init__(plan, on_round_end)
        self.config: FedDGGAConfig = self.method_config  # type: ignore[assignment]
        self.sites = plan.sites
        self.weights = np.full(len(self.sites), 1.0 / len(self.sites))
        #: site -> (round, train_loss) of its last local model.
        self.last_train: dict[str, tuple[int, float]] = {}
        self.gaps: dict[str, float] = {}

    def observe_train(self, server_round: int, sites: list[str], metrics: list[MetricRecord]) -> None:
        """Gap = this round's global-loss − last round's train_loss; step the weights."""
        self.gaps = {}
        for s, m in zip(sites, metrics, strict=True):
            prev = self.last_train.get(s)
            if prev is not None and prev[0] == server_round - 1:
                self.gaps[s] = float(m["global-loss"]) - prev[1]
        if self.gaps:
            idx = np.array([self.sites.index(s) for s in self.gaps])
            rounds = self.plan.settings.num_rounds
            step = ga_step_size(server_round - 1, rounds, self.config.ga_step, len(self.sites))
            gaps = np.array(list(self.gaps.values()))
            self.weights = self.weights.copy()
            self.weights[idx] = generalization_adjustment(self.weights[idx], gaps, step)
        for s, m in zip(sites, metrics, strict=True):
            self.last_train[s] = (server_round, float(m["train_loss"]))

    def aggregation_weights(self, sites: list[str], metrics: list[MetricRecord]) -> np.ndarray:
        """:math:`a_k` of the replying sites, renormalised (uniform if all are 0)."""
        w = np.array([self.weights[self.sites.index(s)] for s in sites])
        return w / w.sum() if w.sum() > 0 else np.full(len(sites), 1.0 / len(sites))

    def round_rows(self, server_round: int) -> list[dict[str, object]]:
        """``site_weight`` for every training site; ``generalization_gap`` where measured."""
        rows: list[dict[str, object]] = [{"site": s, "metric": "site_weight", "value": float(w)}
                                         for s, w in zip(self.sites, self.weights, strict=True)]
        return rows + [{"site": s, "metric": "generalization_gap", "value": g} for s, g in self.gaps.items()]

    def state_dict(self) -> dict[str, object]:
        """Weights (in ``sites`` order) and each site's last (round, train_loss)."""
        return {"sites": list(self.sites), "weights": [float(w) for w in self.weights],
                "last_train": {s: [r, loss] for s, (r, loss) in self.last_train.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore `state_dict` (the sites must match the plan's)."""
        if list(state["sites"]) != list(self.sites):
            raise ValueError(f"checkpoint sites {state['sites']} differ from the plan's {self.sites}")
        self.weights = np.asarray(state["weights"], dtype=np.float64)
        self.last_train = {s: (int(r), float(loss)) for s, (r, loss) in dict(state["last_train"]).items()}


@register("feddg_ga")
class FedDGGA(Unified):
    """Linear probe with weighted CE on the clients; GA-adjusted FedAvg on the server."""

    label: ClassVar[str] = "FedDG-GA"
    config_cls: ClassVar[type[MethodConfig]] = FedDGGAConfig
    strategy_cls: ClassVar[type[FedMammoStrategy]] = FedDGGAStrategy
