r"""q-FFL: fair resource allocation by q-FedAvg aggregation (Li et al. 2020).

q-FFL (Li, Sanjabi, Beirami & Smith, "Fair Resource Allocation in Federated Learning",
ICLR 2020) minimises :math:`\sum_k \frac{p_k}{q+1} F_k^{q+1}(w)`: for q > 0 sites with a
larger loss weigh more, q = 0 is FedAvg's objective. The clients are the plain linear
probe with weighted CE (Unified's objective); the fairness lives in the server's
q-FedAvg step (the paper's q-FedAvg algorithm), `qfedavg_aggregate`:

.. math::
    \Delta w_k = L\,(w^t - \bar w_k^{t+1}),\quad
    \Delta_k = F_k^q(w^t)\,\Delta w_k,\quad
    h_k = q\,F_k^{q-1}(w^t)\,\lVert \Delta w_k \rVert^2 + L\,F_k^q(w^t),\quad
    w^{t+1} = w^t - \frac{\sum_k \Delta_k}{\sum_k h_k}

over the replying sites, with :math:`L = 1/\mathrm{lr}` (the clients' learning rate, as
Flower's ``QFedAvg`` estimates the Lipschitz constant) and :math:`F_k(w^t)` read from
each client's ``global-loss``: the weighted CE, on its training rows, of the global
model :math:`w^t` it received — the quantity q-FedAvg asks for. Flower's Message-API
``QFedAvg`` instead uses each client's ``train_loss`` (its own model after the local
update), which scores every site on a different model and understates the loss of the
sites the global model fits worst; we do not follow it there.

q = 0.1 by default (Flower's ``QFedAvg`` default); the paper tunes q per dataset. Its
derivation assumes local SGD: with the project's default Adam optimiser the update size
is not proportional to the gradient, so :math:`L\,\Delta w` is a rougher gradient
estimate (use ``optimizer="sgd"`` for the paper's setting). Every float array takes the
step; the ``class_weights`` buffer is the same on every client and the server, so its
:math:`\Delta w_k = 0` and it stays unchanged. The pooled method is Unified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from flwr.app import MetricRecord

from strategies.base import MethodConfig, register
from strategies.federated import FederationPlan, FedMammoStrategy
from strategies.unified import Unified, UnifiedConfig

#: Added to F_k before powers, as Flower's ``compute_delta_and_h`` does (F_k may be 0).
LOSS_EPS = 1e-10


@dataclass(frozen=True)
class QFFLConfig(UnifiedConfig):
    """q-FFL hyperparameters.

    Attributes
    ----------
    q : float
        Fairness exponent: 0.1, the default of Flower's ``QFedAvg``. q = 0 is FedAvg
        with uniform client weights (q-FedAvg samples clients uniformly).
    """

    q: float = 0.1


def qfedavg_aggregate(
    global_arrays: dict[str, np.ndarray], local_arrays: Sequence[dict[str, np.ndarray]],
    losses: Sequence[float], q: float, lipschitz: float,
) -> dict[str, np.ndarray]:
    r"""One q-FedAvg server step (Li et al. 2020), in float64.

    Parameters
    ----------
    global_arrays : dict
        The global model :math:`w^t` the clients received, ``{name: array}``.
    local_arrays : sequence of dict
        The replying clients' models :math:`\bar w_k^{t+1}`.
    losses : sequence of float
        :math:`F_k(w^t)`: each client's loss of the global model.
    q : float
        Fairness exponent q ≥ 0.
    lipschitz : float
        L, the Lipschitz estimate (1 / the local learning rate).

    Returns
    -------
    dict
        :math:`w^{t+1} = w^t - \sum_k \Delta_k / \sum_k h_k` with
        :math:`\Delta w_k = L(w^t - \bar w_k)`, :math:`\Delta_k = F_k^q \Delta w_k` and
        :math:`h_k = q F_k^{q-1}\lVert\Delta w_k\rVert^2 + L F_k^q` (norm over all
        floating arrays together); arrays keep their dtypes, non-float arrays are
        copied from ``global_arrays``.
    """
    keys = [k for k, v in global_arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    sum_delta = {k: np.zeros(np.shape(global_arrays[k]), dtype=np.float64) for k in keys}
    sum_h = 0.0
    w = {k: global_arrays[k].astype(np.float64) for k in keys}
    for local, loss in zip(local_arrays, losses, strict=True):
        f = float(loss) + LOSS_EPS
        dw = {k: lipschitz * (w[k] - local[k].astype(np.float64)) for k in keys}
        norm2 = float(sum(np.sum(d * d) for d in dw.values()))
        f_q = f**q
        for k in keys:
            sum_delta[k] += f_q * dw[k]
        sum_h += q * f ** (q - 1.0) * norm2 + lipschitz * f_q
    out = {k: np.array(v, copy=True) for k, v in global_arrays.items()}
    for k in keys:
        out[k] = (w[k] - sum_delta[k] / sum_h).astype(global_arrays[k].dtype)
    return out


class QFFLStrategy(FedMammoStrategy):
    """q-FedAvg aggregation from the clients' global-loss (`qfedavg_aggregate`).

    Parameters
    ----------
    plan : FederationPlan
        The federation; ``plan.settings.lr`` gives L = 1/lr, ``plan.settings.method_overrides`` fills
        `QFFLConfig`.
    on_round_end : callable, optional
        Passed to `FedMammoStrategy`.
    """

    def __init__(self, plan: FederationPlan, on_round_end: Callable[[int], None] | None = None) -> None:
        super().__init__(plan, on_round_end)
        self.config: QFFLConfig = self.method_config  # type: ignore[assignment]
        self.losses: dict[str, float] = {}

    def observe_train(self, server_round: int, sites: list[str], metrics: list[MetricRecord]) -> None:
        """Keep each replying site's :math:`F_k(w^t)` (its ``global-loss``)."""
        self.losses = {s: float(m["global-loss"]) for s, m in zip(sites, metrics, strict=True)}

    def aggregate_arrays(self, sites: list[str], arrays: list[dict[str, np.ndarray]],
                         weights: np.ndarray) -> dict[str, np.ndarray]:
        """The q-FedAvg step (its own normalisation: ``weights`` are not used)."""
        return qfedavg_aggregate(self.sent_arrays, arrays, [self.losses[s] for s in sites],
                                 self.config.q, 1.0 / self.plan.settings.lr)


@register("qffl")
class QFFL(Unified):
    """Linear probe with weighted CE on the clients; q-FedAvg on the server."""

    label: ClassVar[str] = "q-FFL"
    config_cls: ClassVar[type[MethodConfig]] = QFFLConfig
    strategy_cls: ClassVar[type[FedMammoStrategy]] = QFFLStrategy
