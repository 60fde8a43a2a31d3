"""The one training core: pooled, individual and (later) federated training all call it.

Data arrive as `ArrayData` — whatever sites the caller put in it. Pooled *Unified* passes
every site's training rows, *Individual* one site's, a federated client its own: only
where the data sits differs (DESIGN principle 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import product

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold

from client.schema import SENSITIVE_SIZES
from strategies.base import Batch, Method, MethodConfig, TaskSpec, get_method, seed_torch

PREDICT_CHUNK = 8192


@dataclass(frozen=True)
class ArrayData:
    """Training or test rows of one task, from one or more sites.

    Attributes
    ----------
    x : numpy.ndarray
        float32 features (n, d).
    y : numpy.ndarray
        int64 class indices (n,), all labelled.
    domain : numpy.ndarray
        int64 domain index of each row: its site among the task's sites.
    patient : numpy.ndarray
        Patient ids, so that CV folds never split a patient.
    attributes : dict of str to numpy.ndarray
        Other sensitive attributes as int64 codes, ``-1`` where unknown: ``density``
        (A–D → 0–3) and ``age_band`` (<40, 40–70, >70 → 0–2).
    """

    x: np.ndarray
    y: np.ndarray
    domain: np.ndarray
    patient: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: np.ndarray) -> ArrayData:
        """Rows ``idx`` as a new `ArrayData`."""
        attrs = {k: v[idx] for k, v in self.attributes.items()}
        return ArrayData(self.x[idx], self.y[idx], self.domain[idx], self.patient[idx], attrs)

    def group_index(self, kind: str) -> np.ndarray:
        """Subgroup codes of the sensitive attribute ``kind`` (``site`` = the domain)."""
        if kind == "site":
            return self.domain
        if kind not in SENSITIVE_SIZES:
            raise KeyError(f"unknown sensitive attribute {kind!r}; expected one of {sorted(SENSITIVE_SIZES)}")
        return self.attributes.get(kind, np.full(len(self), -1, dtype=np.int64))


def concat(parts: Sequence[ArrayData]) -> ArrayData:
    """Stack several sites' rows (attributes missing at a site become -1)."""
    kinds = sorted({k for p in parts for k in p.attributes})
    attrs = {k: np.concatenate([p.group_index(k) for p in parts]) for k in kinds}
    fields = ("x", "y", "domain", "patient")
    return ArrayData(*(np.concatenate([getattr(p, f) for p in parts]) for f in fields), attrs)


@dataclass(frozen=True)
class HParams:
    """Optimisation hyperparameters of one training run."""

    batch_size: int
    lr: float
    epochs: int


@dataclass(frozen=True)
class FitResult:
    """A trained model, the hyperparameters it used and the CV table that chose them."""

    model: Method
    hparams: HParams
    cv: pd.DataFrame


def class_weights(y: np.ndarray, n_classes: int) -> tuple[float, ...]:
    """Inverse class percentages (paper §2): ``w_c = N / (C_present · n_c)``, 0 if absent.

    Parameters
    ----------
    y : numpy.ndarray
        Training labels.
    n_classes : int
        Number of classes of the task.

    Returns
    -------
    tuple of float
        One weight per class; present classes average to 1 per sample.
    """
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return tuple(float(w) for w in weights)


def make_spec(data: ArrayData, n_classes: int, n_domains: int, sensitive: str = "site") -> TaskSpec:
    """Return the `TaskSpec` of a training set for a method whose subgroups are ``sensitive``."""
    n_groups = n_domains if sensitive == "site" else SENSITIVE_SIZES[sensitive]
    return TaskSpec(int(data.x.shape[1]), n_classes, n_domains, class_weights(data.y, n_classes), n_groups)


def _tensors(data: ArrayData, sensitive: str) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)),
        torch.from_numpy(data.y.astype(np.int64)),
        torch.from_numpy(data.domain.astype(np.int64)),
        torch.from_numpy(data.group_index(sensitive).astype(np.int64)),
    )


def train(
    method: str, data: ArrayData, spec: TaskSpec, config: MethodConfig, hp: HParams, seed: int
) -> Method:
    """Train a fresh ``method`` model on ``data``.

    Parameters
    ----------
    method : str
        Registered method name.
    data : ArrayData
        Training rows.
    spec : TaskSpec
        Dimensions and class weights.
    config : MethodConfig
        The method's configuration.
    hp : HParams
        Batch size, learning rate, epochs.
    seed : int
        Seeds initialisation and batch order: the same seed gives the same model.

    Returns
    -------
    Method
        The trained model, in eval mode.
    """
    seed_torch(seed)
    model = get_method(method)(spec, config)
    model.configure_optimizer(hp.lr)
    fit_epochs(model, data, hp, seed)
    return model.eval()


def fit_epochs(
    model: Method, data: ArrayData, hp: HParams, seed: int, start: float = 0.0, end: float = 1.0
) -> float:
    """Run ``hp.epochs`` epochs of minibatch updates on an existing model.

    Parameters
    ----------
    model : Method
        A model with its optimiser configured.
    data : ArrayData
        Training rows.
    hp : HParams
        Batch size and epochs (the learning rate is the optimiser's).
    seed : int
        Seeds the batch order.
    start, end : float
        Training progress at the first epoch and after the last (a federated round
        covers only part of the schedule of methods like DANN).

    Returns
    -------
    float
        Mean training loss of the last epoch.
    """
    x, y, domain, group = _tensors(data, model.config.sensitive)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    model.train()
    last = float("nan")
    for epoch in range(hp.epochs):
        model.begin_epoch(start + (end - start) * epoch / max(hp.epochs, 1))
        perm = torch.randperm(n, generator=gen)
        losses = []
        for i in range(0, n, hp.batch_size):
            idx = perm[i : i + hp.batch_size]
            logs = model.update(Batch(x[idx], y[idx], domain[idx], group[idx]))
            losses.append(logs.get("loss", float("nan")))
        last = float(np.mean(losses)) if losses else last
    return last


def predict(model: Method, x: np.ndarray) -> np.ndarray:
    """Predicted class indices for features ``x`` (chunked, no autograd)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], PREDICT_CHUNK):
            chunk = torch.from_numpy(np.ascontiguousarray(x[i : i + PREDICT_CHUNK], dtype=np.float32))
            out.append(model(chunk).argmax(dim=1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def cv_folds(data: ArrayData, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-grouped, label-stratified folds (fewer when the data cannot fill them)."""
    n_groups = np.unique(data.patient).size
    k = min(folds, n_groups)
    if k < 2:
        return []
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
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
        Train the grid in lockstep (`strategies.lockstep`); by default when the method
        declares it can. ``False`` forces one training run per candidate and fold.

    Returns
    -------
    tuple
        The chosen `HParams` (with ``config.epochs`` for the retrain) and a table with
        one row per candidate and fold (batch_size, lr, fold, accuracy).
    """
    splits = cv_folds(data, folds, seed)
    if _use_lockstep(method, lockstep):
        from strategies.lockstep import cv_rows  # it builds on this module

        rows = cv_rows(method, data, n_classes, n_domains, config, splits, seed)
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
        Use the lockstep trainer for search and retrain (default: when the method can).

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
        from strategies.lockstep import train_model

        return FitResult(train_model(method, data, spec, config, hp, seed), hp, cv)
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
    from strategies.lockstep import supports_lockstep

    return supports_lockstep(get_method(method))


def with_overrides(config: MethodConfig, **changes: object) -> MethodConfig:
    """Copy ``config`` with the given fields changed (ignoring None values)."""
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def fit_steps(model: Method, data: ArrayData, hp: HParams, steps: int, seed: int,
              start: float = 0.0, end: float = 1.0) -> float:
    """Run exactly ``steps`` minibatch updates (batches drawn without replacement, cycling).

    Federated clients use it so that every site takes the same number of local steps per
    round: with FedAvg's example weights a site then moves the global model in proportion
    to its size, as in pooled SGD, instead of in proportion to its size squared.

    Parameters
    ----------
    model : Method
        A model with its optimiser configured.
    data : ArrayData
        Training rows.
    hp : HParams
        Batch size (the learning rate is the optimiser's).
    steps : int
        Number of updates.
    seed : int
        Seeds the batch order.
    start, end : float
        Training progress at the first and after the last step.

    Returns
    -------
    float
        Mean training loss over the steps.
    """
    x, y, domain, group = _tensors(data, model.config.sensitive)
    gen = torch.Generator().manual_seed(seed)
    n, b = len(data), min(hp.batch_size, len(data))
    model.train()
    model.begin_epoch(start)
    order, pos, losses = torch.randperm(n, generator=gen), 0, []
    for _ in range(steps):
        if pos + b > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + b]
        pos += b
        losses.append(model.update(Batch(x[idx], y[idx], domain[idx], group[idx])).get("loss", float("nan")))
    return float(np.mean(losses)) if losses else float("nan")
