"""The pooled (centralised) study: Individual probes per site and methods on all sites.

The pooled run is "one client that holds every site": the same training core
(`strategies.core`) and the same client-side evaluation (`client.evaluation`) as the
federated run, with all sites' rows in one place.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping

import pandas as pd
import torch

from client.evaluation import SiteCounts, site_counts
from client.feature_store import SiteFeatures
from client.local import SiteTask, site_task
from client.schema import task_classes
from server.history import ALL_SITES, RunKey, empty_history, rows_from_counts
from sim.experiment import Experiment
from strategies.base import MethodConfig, TaskSpec, get_method
from strategies.core import concat, predict
from strategies.protocol import FitResult, fit

log = logging.getLogger("fedmammo")


def evaluate(result: FitResult, tasks: Mapping[str, SiteTask], n_classes: int) -> list[SiteCounts]:
    """Each test site's confusion counts for one model (what a client would send)."""
    return [
        site_counts(t.name, t.test_y, predict(result.model, t.test_x), n_classes, t.test_groups)
        for t in tasks.values()
    ]


def jobs(exp: Experiment, tasks: Mapping[str, SiteTask]) -> list[tuple[str, str, list[str]]]:
    """(method, trained_on, training sites) for every model the experiment trains."""
    jobs = []
    if exp.study.individual:
        jobs += [(exp.study.individual_method, s, [s]) for s in tasks]
    jobs += [(m, ALL_SITES, list(tasks)) for m in exp.study.methods]
    return jobs


def job_cost(exp: Experiment, job: tuple[str, str, list[str]], tasks: Mapping[str, SiteTask],
             n_classes: int, domains: int) -> float:
    """A job's relative training cost: the samples its protocol sees × its model's parameters.

    Only to hand the largest models out first (`sim.parallel`): on frozen features a
    step's time follows the parameters it updates (their Adam traffic and products), and
    every method sees its samples in steps of 8–32.
    """
    method, _, sites = job
    config = exp.method_config(method)
    n = sum(len(tasks[s].train) for s in sites)
    epochs = config.epochs
    if exp.protocol.search and config.searchable:
        # Each of the k folds trains on (k − 1)/k of the rows, for every (batch size, lr).
        per_config = (exp.protocol.folds - 1) * config.search_epochs
        epochs += per_config * len(config.batch_sizes) * len(config.lrs)
    dim = tasks[sites[0]].train.x.shape[1]
    return float(n * epochs * _parameters(method, config, dim, n_classes, domains))


@functools.cache
def _parameters(method: str, config: MethodConfig, dim: int, n_classes: int, domains: int) -> int:
    """Trainable parameters of ``method``'s model on ``dim``-wide features."""
    with torch.random.fork_rng(devices=[]):  # building it draws weights: leave the caller's RNG be
        model = get_method(method)(TaskSpec(dim, n_classes, domains, (1.0,) * n_classes), config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_tasks(exp: Experiment, task: str, entries: Mapping[str, SiteFeatures]) -> dict[str, SiteTask]:
    """Every site's train/test arrays for ``task`` (sites without its labels are skipped)."""
    present = [s for s in entries if entries[s].manifest[task].notna().any()]
    tasks = {}
    for site in entries:
        st = site_task(entries[site], task, present.index(site)) if site in present else None
        if st is None and site not in present:
            log.info("skipping site %s for task %s: no %s labels", site, task, task)
        if st is not None:
            tasks[site] = st
    return tasks


def n_domains(entries: Mapping[str, SiteFeatures], task: str) -> int:
    """Number of sites holding ``task``'s labels (the domains of its models; at least 1)."""
    return max(sum(1 for e in entries.values() if e.manifest[task].notna().any()), 1)


def train_job(
    exp: Experiment, fm: str, task: str, tasks: Mapping[str, SiteTask], domains: int,
    job: tuple[str, str, list[str]],
) -> tuple[pd.DataFrame, dict[str, object]]:
    """Train and evaluate one model of `jobs`: its history rows and chosen hyperparameters.

    Parameters
    ----------
    exp : Experiment
        The experiment.
    fm, task : str
        Which FM profile and task.
    tasks : mapping of str to SiteTask
        `load_tasks` of the task.
    domains : int
        `n_domains` of the task.
    job : tuple
        (method, trained_on, training sites).

    Returns
    -------
    tuple
        The model's history rows, and its hyperparameter row: the chosen batch size,
        learning rate and epochs, its training rows and ``train_s``, the wall seconds its
        search and retrain took (on a worker, beside whatever the other workers ran).
    """
    method, trained_on, train_sites = job
    classes = task_classes(task)
    data = concat([tasks[s].train for s in train_sites])
    start = time.perf_counter()
    result = fit(method, data, len(classes), domains, exp.method_config(method),
                 do_search=exp.protocol.search, folds=exp.protocol.folds, seed=exp.protocol.seed)
    seconds = time.perf_counter() - start
    key = RunKey("pooled", fm, task, method, trained_on)
    history = rows_from_counts(key, evaluate(result, tasks, len(classes)), classes, task)
    hp = {"fm": fm, "task": task, "method": method, "trained_on": trained_on,
          "batch_size": result.hparams.batch_size, "lr": result.hparams.lr,
          "epochs": result.hparams.epochs, "n_train": len(data), "train_s": seconds}
    return history, hp


def run_task(
    exp: Experiment, fm: str, task: str, entries: Mapping[str, SiteFeatures],
    advance: Callable[[int], None] = lambda _n: None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and evaluate every model of one (FM, task).

    Parameters
    ----------
    exp : Experiment
        The experiment.
    fm, task : str
        Which FM profile and task.
    entries : mapping of str to SiteFeatures
        Every site's store entry for this FM.
    advance : callable
        Called with 1 after each trained model (progress display).

    Returns
    -------
    tuple of pandas.DataFrame
        The history rows and the chosen hyperparameters of each model.
    """
    tasks = load_tasks(exp, task, entries)
    frames, hps = [empty_history()], []
    for job in jobs(exp, tasks):
        history, hp = train_job(exp, fm, task, tasks, n_domains(entries, task), job)
        frames.append(history)
        hps.append(hp)
        advance(1)
    return pd.concat(frames, ignore_index=True), pd.DataFrame(hps)


def count_jobs(exp: Experiment, entries: Mapping[str, SiteFeatures], task: str) -> int:
    """How many models `run_task` will train (for the progress bar)."""
    labelled = sum(1 for e in entries.values() if (e.manifest[task].notna()
                   & (e.manifest["split"] == "train")).any())
    return (labelled if exp.study.individual else 0) + len(exp.study.methods)
