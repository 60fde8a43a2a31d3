"""The paper's protocol on the training core: grid search by k-fold CV, then the retrain.

`fit` is what pooled, Individual and the benchmarks call; `search` its CV grid (§3:
batch {8, 16, 32} × lr {1e-3, 1e-4, 1e-5}, 3 patient-grouped folds). Methods that
declare it train their grid in lockstep (`strategies.lockstep`) or a fold's learning
rates stacked (`strategies.stacked`), and retrain on the same path; the others one run
per candidate and fold (`strategies.core.train`). All give the same table and, up to
float rounding, the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
import pandas as pd

from strategies.base import Method, MethodConfig, get_method
from strategies.core import ArrayData, HParams, make_spec, predict, train
from strategies.folds import FastStratifiedGroupKFold
from strategies.lockstep import cv_rows, supports_lockstep, train_model
from strategies.stacked import cv_rows_stacked, supports_stacked, train_one_stacked


@dataclass(frozen=True)
class FitResult:
    """A trained model, the hyperparameters it used and the CV table that chose them."""

    model: Method
    hparams: HParams
    cv: pd.DataFrame


def cv_folds(data: ArrayData, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped, label-stratified folds (fewer when the data cannot fill them).

    sklearn's `StratifiedGroupKFold` folds, exactly (`strategies.folds`).
    """
    n_groups = np.unique(data.patient).size
    k = min(folds, n_groups)
    if k < 2:
        return []
    splitter = FastStratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(data)), data.y, groups=data.patient))


def search(
    method: str, data: ArrayData, n_classes: int, n_domains: int, config: MethodConfig,
    folds: int = 3, seed: int = 0, lockstep: bool | None = None,
) -> tuple[HParams, pd.DataFrame]:
    """The paper's grid search: every (batch size, lr) by k-fold CV, best mean accuracy.

    Parameters
    ----------
    method : str
        Registered method name.
    data : ArrayData
        The training split.
    n_classes, n_domains : int
        Task dimensions.
    config : MethodConfig
        Supplies the grid (``batch_sizes`` × ``lrs``) and ``search_epochs``.
    folds : int
        CV folds (3 in the paper).
    seed : int
        Seeds folds and training.
    lockstep : bool, optional
        Train the grid in lockstep (`strategies.lockstep`), or each fold's learning
        rates stacked (`strategies.stacked`), by default when the method declares it
        can. ``False`` forces one training run per candidate and fold.

    Returns
    -------
    tuple
        The chosen `HParams` (with ``config.epochs`` for the retrain) and a table with
        one row per candidate and fold (batch_size, lr, fold, accuracy).
    """
    splits = cv_folds(data, folds, seed)
    if _use_lockstep(method, lockstep):
        rows = cv_rows(method, data, n_classes, n_domains, config, splits, seed)
    elif lockstep is not False and supports_stacked(get_method(method), config):
        rows = cv_rows_stacked(method, data, n_classes, n_domains, config, splits, seed)
    else:
        rows = _cv_rows_per_config(method, data, n_classes, n_domains, config, splits, seed)
    cv = pd.DataFrame(rows, columns=["batch_size", "lr", "fold", "accuracy"])
    if cv.empty:
        return HParams(config.batch_size, config.lr, config.epochs), cv
    # Ties go to the first candidate in grid order, so the choice is deterministic.
    means = cv.groupby(["batch_size", "lr"], sort=False)["accuracy"].mean()
    bs, lr = means.idxmax()
    return HParams(int(bs), float(lr), config.epochs), cv


def fit(
    method: str, data: ArrayData, n_classes: int, n_domains: int, config: MethodConfig | None = None,
    *, do_search: bool = True, folds: int = 3, seed: int = 0, lockstep: bool | None = None,
) -> FitResult:
    """Search (when asked and the method allows it), then retrain on all of ``data``.

    Parameters
    ----------
    method : str
        Registered method name.
    data : ArrayData
        The training split.
    n_classes, n_domains : int
        Task dimensions.
    config : MethodConfig, optional
        Defaults to the method's own config class defaults.
    do_search : bool
        Run the CV grid search; otherwise use the config's batch size and lr.
    folds : int
        CV folds.
    seed : int
        Seed of the whole fit.
    lockstep : bool, optional
        Use the lockstep trainer for search and retrain, or the stacked one (a single run
        for the retrain), by default when the method can; ``False`` trains one run per
        candidate, fold and the retrain on the per-config path.

    Returns
    -------
    FitResult
        The retrained model, its hyperparameters and the CV table.
    """
    config = config or get_method(method).config_cls()
    hp, cv = HParams(config.batch_size, config.lr, config.epochs), pd.DataFrame()
    if do_search and config.searchable:
        hp, cv = search(method, data, n_classes, n_domains, config, folds, seed, lockstep)
    spec = make_spec(data, n_classes, n_domains, config.sensitive)
    if _use_lockstep(method, lockstep):
        return FitResult(train_model(method, data, spec, config, hp, seed), hp, cv)
    cls = get_method(method)
    if lockstep is not False and supports_stacked(cls, config):
        return FitResult(train_one_stacked(cls, data, spec, config, hp, seed), hp, cv)
    return FitResult(train(method, data, spec, config, hp, seed), hp, cv)


def _cv_rows_per_config(
    method: str, data: ArrayData, n_classes: int, n_domains: int, config: MethodConfig,
    splits: list[tuple[np.ndarray, np.ndarray]], seed: int,
) -> list[dict[str, float]]:
    """The CV table with one training run per candidate and fold (fold ``f`` seeded ``seed + f``)."""
    rows = []
    for (bs, lr), (f, (tr, va)) in product(product(config.batch_sizes, config.lrs), enumerate(splits)):
        part = data.take(tr)
        model = train(method, part, make_spec(part, n_classes, n_domains, config.sensitive), config,
                      HParams(bs, lr, config.search_epochs), seed + f)
        acc = float((predict(model, data.x[va]) == data.y[va]).mean())
        rows.append({"batch_size": bs, "lr": lr, "fold": f, "accuracy": acc})
    return rows


def _use_lockstep(method: str, requested: bool | None) -> bool:
    """Whether to train ``method`` in lockstep: as requested, else if its class declares it."""
    if requested is not None:
        return requested
    return supports_lockstep(get_method(method))
