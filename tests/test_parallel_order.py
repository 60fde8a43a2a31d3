"""Handing models out to workers: largest first within an FM × task, results in the serial order."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sim.experiment import load_experiment
from sim.parallel import map_ordered
from sim.pooled import job_cost
from strategies.core import ArrayData


@pytest.mark.slow  # a spawned worker process
def test_items_are_handed_out_in_the_given_order_and_come_back_in_their_own():
    finished: list[int] = []
    items = [-3, 1, -4, -1, 5]
    # One worker runs them one at a time, so they finish in the order they were handed out.
    results = map_ordered(abs, items, 1, finished.append, order=[2, 4, 0, 3, 1])
    assert results == [3, 1, 4, 1, 5]
    assert finished == [-4, 5, -3, -1, 1]


def _tasks(rows: dict[str, int], dim: int) -> dict[str, SimpleNamespace]:
    rng = np.random.default_rng(0)
    return {s: SimpleNamespace(train=ArrayData(rng.normal(size=(n, dim)).astype(np.float32),
                                               rng.integers(0, 3, n), np.zeros(n, int), np.arange(n)))
            for s, n in rows.items()}


def test_job_cost_is_samples_seen_times_parameters(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text('name = "cost"\n[study]\nfms = ["medclip"]\ntasks = ["density"]\n'
                    'methods = ["unified", "dann", "fades"]\n[protocol]\nepochs = 10\nsearch_epochs = 4\n')
    exp = load_experiment(path)
    tasks = _tasks({"a": 30, "b": 50}, 16)
    every = ["a", "b"]
    # Unified: a 16 → 3 probe, 17 × 3 parameters; 3 folds train on 2/3 of the 80 rows each,
    # 9 configurations × 4 epochs, then 10 epochs on all rows.
    epochs = 10 + 2 * 4 * 3 * 3
    assert job_cost(exp, ("unified", "all", every), tasks, 3, 2) == 80 * epochs * 17 * 3
    assert job_cost(exp, ("unified", "a", ["a"]), tasks, 3, 2) == 30 * epochs * 17 * 3
    # DANN has more parameters over the same protocol; FADES trains one run, no search.
    dann = job_cost(exp, ("dann", "all", every), tasks, 3, 2)
    assert dann > job_cost(exp, ("unified", "all", every), tasks, 3, 2)
    fades = job_cost(exp, ("fades", "all", every), tasks, 3, 2)
    assert fades % (80 * 10) == 0 and fades < dann
