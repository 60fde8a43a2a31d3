"""Every registered method, automatically: a new method file is covered without edits here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from strategies import load_all
from strategies.base import REGISTRY, Batch, TaskSpec
from strategies.core import ArrayData, make_spec, predict

load_all()
METHODS = sorted(REGISTRY)


def _toy(n=96, d=16, n_classes=3, n_domains=3, sep=4.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    domain = rng.integers(0, n_domains, n)
    x = rng.normal(size=(n, d)) + sep * np.eye(n_classes, d)[y]
    return ArrayData(x.astype(np.float32), y, domain, np.arange(n),
                     {"density": rng.integers(-1, 4, n), "age_band": rng.integers(-1, 3, n)})


def _model(name, data, n_classes=3, n_domains=3, **changes):
    cls = REGISTRY[name]
    config = cls.config_cls(**changes)
    torch.manual_seed(0)
    model = cls(make_spec(data, n_classes, n_domains, config.sensitive), config)
    model.configure_optimizer(1e-3)
    return model


def _batch(data: ArrayData, idx: np.ndarray, sensitive: str = "site") -> Batch:
    return Batch(torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx]),
                 torch.from_numpy(data.domain[idx]), torch.from_numpy(data.group_index(sensitive)[idx]))


@pytest.mark.parametrize("name", METHODS)
def test_initialises_updates_and_predicts(name):
    data = _toy()
    model = _model(name, data)
    model.begin_epoch(0.0)
    for step in range(3):
        logs = model.update(_batch(data, np.arange(step * 32, step * 32 + 32)))
        assert np.isfinite(logs["loss"])
    pred = predict(model, data.x)
    assert pred.shape == (len(data),) and pred.min() >= 0 and pred.max() < 3
    assert model(torch.from_numpy(data.x[:5])).shape == (5, 3)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("sensitive", ["density", "age_band"])
def test_other_sensitive_attributes_run(name, sensitive):
    data = _toy()
    model = _model(name, data, sensitive=sensitive)
    logs = model.update(_batch(data, np.arange(32), sensitive))
    assert np.isfinite(logs["loss"])


@pytest.mark.parametrize("name", METHODS)
def test_loss_decreases_on_a_separable_problem(name):
    data = _toy(n=256)
    model = _model(name, data)
    losses = []
    rng = np.random.default_rng(1)
    for step in range(60):
        model.begin_epoch(step / 60)
        losses.append(model.update(_batch(data, rng.choice(len(data), 32, replace=False)))["loss"])
    assert np.mean(losses[-10:]) < np.mean(losses[:10]), losses


def test_unknown_method_names_the_registry():
    from strategies.base import get_method

    with pytest.raises(KeyError, match="registered"):
        get_method("nope")


def test_taskspec_defaults_groups_to_domains():
    assert TaskSpec(4, 2, 5, (1.0, 1.0)).n_groups == 5


def test_loading_every_method_leaves_numba_unloaded() -> None:
    # A deployed client starts a fresh process per message and loads every method;
    # numba (~0.15 s to import) is only for lockstep GroupDRO's compiled step.
    import subprocess
    import sys

    code = ("import sys, client.app; from strategies import load_all; load_all(); "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
