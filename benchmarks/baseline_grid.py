"""The straightforward implementation of the paper's probe protocol (the speed baseline).

One PyTorch ``DataLoader`` loop per (batch size, learning rate, fold): a fresh
``nn.Linear``, ``torch.optim.Adam`` and the weighted cross-entropy, then the 50-epoch
retrain of the best configuration on all rows. Same folds (`strategies.protocol.cv_folds`),
seeds, loss and selection rule as the project's search, so its results can be compared.
"""

from __future__ import annotations

from itertools import product

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from strategies.base import weighted_cross_entropy
from strategies.core import ArrayData, class_weights
from strategies.protocol import cv_folds


def train_probe(x: np.ndarray, y: np.ndarray, n_classes: int, bs: int, lr: float, epochs: int,
                seed: int) -> nn.Linear:
    """One probe trained with a DataLoader loop (shuffled, last partial batch kept)."""
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], n_classes)
    weights = torch.tensor(class_weights(y, n_classes), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y.astype(np.int64)))
    loader = DataLoader(dataset, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            weighted_cross_entropy(model(xb), yb, weights).backward()
            opt.step()
    return model


def accuracy(model: nn.Linear, x: np.ndarray, y: np.ndarray) -> float:
    """Validation accuracy of a probe."""
    with torch.inference_mode():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def protocol(data: ArrayData, n_classes: int, batch_sizes: tuple[int, ...], lrs: tuple[float, ...],
             search_epochs: int, epochs: int, folds: int = 3, seed: int = 0,
             ) -> tuple[tuple[int, float], dict[tuple[int, float], float], nn.Linear]:
    """Grid search by k-fold CV (best mean accuracy, first in grid order on ties), then retrain.

    Returns
    -------
    tuple
        The chosen (batch size, lr), the mean CV accuracy of every candidate, the retrained probe.
    """
    splits = cv_folds(data, folds, seed)
    means = {}
    for bs, lr in product(batch_sizes, lrs):
        accs = [accuracy(train_probe(data.x[tr], data.y[tr], n_classes, bs, lr, search_epochs, seed + f),
                         data.x[va], data.y[va]) for f, (tr, va) in enumerate(splits)]
        means[(bs, lr)] = float(np.mean(accs))
    best = max(means, key=lambda k: means[k])
    return best, means, train_probe(data.x, data.y, n_classes, best[0], best[1], epochs, seed)
