"""Issue-level behaviour of the methods on the calibrated synthetic sites (small scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from client.feature_store import Provenance, SiteFeatures
from client.local import site_task
from server.history import RunKey, rows_from_counts
from sim.pooled import evaluate
from sim.synthetic import PROFILES, site_features, site_manifest
from strategies.core import concat
from strategies.protocol import fit


def _tasks(sites, scale, task="density", fm="mammoclip"):
    entries = []
    for i, s in enumerate(sites):
        m = site_manifest(s, scale, seed=0)
        x = site_features(m, i, PROFILES[fm], seed=0)
        entries.append(SiteFeatures(m, x, Provenance(fm, s.name, x.shape[1], len(m), "synthetic", "t")))
    labelled = [e for e in entries if e.manifest[task].notna().any()]
    return {t.name: t for d, e in enumerate(labelled) if (t := site_task(e, task, d)) is not None}


def _summary(method, tasks, **changes):
    from strategies.base import get_method

    config = get_method(method).config_cls(epochs=30, **changes)
    result = fit(method, concat([t.train for t in tasks.values()]), 4, len(tasks), config, do_search=False)
    df = rows_from_counts(RunKey("pooled", "mammoclip", "density", method, "all"),
                          evaluate(result, tasks, 4), "ABCD", "density")
    return {m: df[df.metric == f"f1_{m}"]["value"].item() for m in ("mean", "sd", "worst")}


def test_groupdro_protects_the_worst_site_on_density(sites):
    tasks = _tasks(sites, 1.0)  # at smaller scales the probe interpolates every site's training set
    unified, dro = _summary("unified", tasks), _summary("groupdro", tasks)
    assert dro["worst"] >= unified["worst"] - 0.02
    assert dro["sd"] <= unified["sd"]


def test_dann_hides_the_site_from_its_discriminator(sites):
    """DANN's site discriminator does worse on φ_z than a site probe on the raw features,
    and than the same network's discriminator trained without gradient reversal (γ = 0).

    (A *fresh* probe on φ_z still finds the site: DANN fools its adversary, which is the
    known limit of adversarial invariance; the closing note of the issue records it.)
    """
    from strategies.dann import DannConfig

    tasks = _tasks(sites, 0.2)
    data = concat([t.train for t in tasks.values()])
    x = np.concatenate([t.test_x for t in tasks.values()])
    site = np.concatenate([np.full(len(t.test_y), i) for i, t in enumerate(tasks.values())])
    acc = {"raw": cross_val_score(LogisticRegression(max_iter=2000), x, site, cv=3).mean()}
    for name, gamma in (("dann", 10.0), ("no_reversal", 0.0)):
        model = fit("dann", data, 4, len(tasks), DannConfig(epochs=20, gamma=gamma), do_search=False).model
        with torch.inference_mode():
            guess = model.discriminator(model.embed(torch.from_numpy(x))).argmax(1).numpy()
        acc[name] = float((guess == site).mean())
    assert acc["dann"] < acc["raw"] - 0.2, acc
    assert acc["dann"] < acc["no_reversal"] - 0.2, acc


@pytest.mark.parametrize("task", ["diagnosis"])
def test_every_method_runs_through_the_pooled_evaluation(sites, task):
    from strategies import load_all
    from strategies.base import REGISTRY

    load_all()
    tasks = _tasks(sites, 0.05, task=task)
    for name in sorted(REGISTRY):
        config = REGISTRY[name].config_cls(epochs=2)
        res = fit(name, concat([t.train for t in tasks.values()]), 3, len(tasks), config, do_search=False)
        counts = evaluate(res, tasks, 3)
        assert [c.site for c in counts] == list(tasks)
        assert sum(int(c.total().sum()) for c in counts) == sum(len(t.test_y) for t in tasks.values())
