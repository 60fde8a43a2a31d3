"""Reweighting math of the worst-site strategies: simplex projection, DRFA and EG steps.

Pure numpy functions shared by GroupDRO's server side (and usable by any DRO-style
strategy): Deng et al. 2020 (DRFA), Mohri et al. 2019 (AFL), Sagawa et al. 2019
(exponentiated gradient), Duchi et al. 2008 (projection onto the simplex).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Smallest server weight in AFL/DRFA (FedTorch ``drfa.py`` clips at 1e-3).
SIMPLEX_FLOOR = 1e-3


def project_to_simplex(v: np.ndarray, floor: float = SIMPLEX_FLOOR, total: float = 1.0) -> np.ndarray:
    r"""Euclidean projection of ``v`` onto :math:`\{x : \sum_i x_i = m,\ x_i \ge \epsilon\}`.

    Parameters
    ----------
    v : array_like
        (K,) vector to project.
    floor : float
        The floor ε; needs ``K * floor <= total``.
    total : float
        The mass m (1 for the simplex; a part of it when only some sites update).

    Returns
    -------
    numpy.ndarray
        float64 (K,) projection.

    Notes
    -----
    With :math:`y = x - \epsilon` the problem is the projection of :math:`v - \epsilon`
    onto the simplex of mass :math:`m - K\epsilon`, solved exactly by the sort-based
    algorithm of Duchi et al. (2008, Fig. 1). FedTorch instead projects onto the plain
    simplex, clips to 1e-3 and renormalises, which can leave entries just below the
    floor; the two agree whenever no entry reaches the floor.
    """
    v = np.asarray(v, dtype=np.float64).ravel()
    mass = total - v.size * floor
    if mass < -1e-12:
        raise ValueError(f"floor {floor} too large for {v.size} entries")
    return floor + _project_scaled_simplex(v - floor, max(mass, 0.0))


def _project_scaled_simplex(v: np.ndarray, mass: float) -> np.ndarray:
    """Projection onto ``{x >= 0, sum x = mass}`` (Duchi et al. 2008)."""
    if mass == 0:
        return np.zeros_like(v)
    u = np.sort(v)[::-1]
    excess = np.cumsum(u) - mass
    k = np.arange(1, v.size + 1)
    rho = np.nonzero(u - excess / k > 0)[0][-1]
    return np.maximum(v - excess[rho] / (rho + 1), 0.0)


def drfa_step(
    lam: np.ndarray, losses: np.ndarray, gamma: float, floor: float = SIMPLEX_FLOOR, total: float = 1.0
) -> np.ndarray:
    r"""AFL/DRFA dual ascent: :math:`\lambda \leftarrow \Pi(\lambda + \gamma\,\ell)`, renormalised.

    Parameters
    ----------
    lam : array_like
        (K,) current server weights over clients (sites).
    losses : array_like
        (K,) losses reported by the clients.
    gamma : float
        Dual step size γ (0.1 decayed ×0.9 per round in DRFA).
    floor : float
        Smallest weight, so no site is ever dropped (1e-3 in FedTorch).
    total : float
        Mass of the result: 1, or the replying sites' share (`server_weights_step`).

    Returns
    -------
    numpy.ndarray
        float64 (K,) weights summing to ``total``, each ≥ ``floor``.
    """
    lam = np.asarray(lam, dtype=np.float64) + gamma * np.asarray(losses, dtype=np.float64)
    projected = project_to_simplex(lam, floor, total)
    # The projection already sums to ``total``; rescaling only removes rounding drift.
    return total * projected / projected.sum()


def eg_step(lam: np.ndarray, losses: np.ndarray, eta: float) -> np.ndarray:
    r"""Exponentiated-gradient step :math:`\lambda_k \propto \lambda_k e^{\eta \ell_k}` (numpy).

    Parameters
    ----------
    lam : array_like
        (K,) current positive weights (any total mass).
    losses : array_like
        (K,) losses reported by the clients.
    eta : float
        Step size η.

    Returns
    -------
    numpy.ndarray
        float64 (K,) new weights with the same total mass as ``lam``.

    Notes
    -----
    Sagawa et al. (2019), Algorithm 1, with one server round as one step; computed as a
    softmax of :math:`\log\lambda + \eta\ell` so that large η·ℓ cannot overflow.
    """
    lam = np.asarray(lam, dtype=np.float64)
    logits = np.log(lam) + eta * np.asarray(losses, dtype=np.float64)
    w = np.exp(logits - logits.max())
    return lam.sum() * w / w.sum()


def server_weights_step(
    lam: np.ndarray, present: np.ndarray, losses: np.ndarray,
    step: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    r"""Apply a weight update to the replying sites only, keeping the others exactly.

    Parameters
    ----------
    lam : array_like
        (K,) current weights on the simplex.
    present : array_like of bool
        (K,) True for the sites that replied this round.
    losses : array_like
        (K,) losses; entries of absent sites are ignored.
    step : callable
        ``step(sub_lam, sub_losses)`` returning new weights for the replying sites with
        the same total mass as ``sub_lam`` (e.g. `eg_step`, or `drfa_step` with
        ``total=sub_lam.sum()``).

    Returns
    -------
    numpy.ndarray
        float64 (K,) new weights, still summing to 1.

    Notes
    -----
    The replying sites S share their current mass :math:`m_S = \sum_{k\in S}\lambda_k`:
    a site that did not report has no new loss and keeps its weight. With every site
    replying this is the plain step of AFL (Mohri et al. 2019) / DRFA (Deng et al. 2020)
    or GroupDRO's exponentiated gradient.
    """
    lam = np.asarray(lam, dtype=np.float64).copy()
    present = np.asarray(present, dtype=bool)
    if present.any():
        lam[present] = step(lam[present], np.asarray(losses, dtype=np.float64)[present])
    return lam


def drfa_gamma(server_round: int, gamma: float, decay: float) -> float:
    r"""DRFA's dual step size at a round: :math:`\gamma_t = \gamma\,\mathrm{decay}^{t-1}`."""
    return gamma * decay ** (server_round - 1)


def count_weights(counts: np.ndarray, floor: float = SIMPLEX_FLOOR) -> np.ndarray:
    r"""Initial AFL/DRFA weights: sample-count proportions :math:`n_k / \sum_j n_j`, floored.

    Parameters
    ----------
    counts : array_like
        (K,) training examples per site.
    floor : float
        Smallest weight (projection onto the floored simplex, `project_to_simplex`).

    Returns
    -------
    numpy.ndarray
        float64 (K,) weights summing to 1.
    """
    n = np.asarray(counts, dtype=np.float64)
    return project_to_simplex(n / n.sum(), floor)
