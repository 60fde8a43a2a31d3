"""Lockstep grid training against the per-config path (autograd + torch.optim), run by run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from strategies import lockstep as ls
from strategies.base import get_method
from strategies.core import ArrayData, HParams, make_spec, predict, train
from strategies.lockstep_dro import DroSpec, dro_spec
from strategies.protocol import cv_folds, fit, search

N_CLASSES, N_DOMAINS = 3, 2


def _data(n: int, d: int, seed: int, shift: float = 0.6) -> ArrayData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    x = (rng.normal(size=(n, d)) + shift * np.eye(N_CLASSES, d)[y]).astype(np.float32)
    return ArrayData(x, y, rng.integers(0, N_DOMAINS, n), np.arange(n) // 2)


@pytest.mark.parametrize(("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 0.01), ("sgd", 0.1)])
def test_every_run_matches_its_own_training(optimizer: str, weight_decay: float) -> None:
    # 203 rows in 3 folds give folds of different sizes: at batch 3 their epochs have
    # different numbers of batches, so a fold must sit out the last step exactly.
    data = _data(203, 12, 0)
    config = get_method("unified").config_cls(optimizer=optimizer, weight_decay=weight_decay)
    splits = cv_folds(data, 3, 0)
    assert len({-(-len(tr) // 3) for tr, _ in splits}) > 1
    specs = [make_spec(data.take(tr), N_CLASSES, N_DOMAINS) for tr, _ in splits]
    init = torch.stack([ls._fold_init(get_method("unified"), s, config, 7 + f) for f, s in enumerate(specs)])
    weights = torch.tensor([s.class_weights for s in specs], dtype=torch.float32)
    x, y = ls.augment(data.x), torch.from_numpy(data.y)
    lrs = (1e-2, 1e-3)
    for bs in (3, 8):
        group = ls.RunGroup([tr for tr, _ in splits], weights, init, [7, 8, 9], lrs, bs, 3)
        trained = ls.train_group(x, y, group, config)
        for f, (tr, _) in enumerate(splits):
            for j, lr in enumerate(lrs):
                ref = train("unified", data.take(tr), specs[f], config, HParams(bs, lr, 3), 7 + f)
                assert not torch.equal(ref.linear.weight, init[f, :, :-1])  # it did train
                torch.testing.assert_close(trained[f, j], ls.linear_weights(ref), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["unified", "groupdro"])
def test_search_and_retrain_agree_with_per_config_path(method: str) -> None:
    train_set, test_set = _data(300, 16, 1, shift=1.5), _data(200, 16, 2, shift=1.5)
    # lr 0.05 over 4 epochs beats 1e-5 (which barely moves from init) on every fold.
    config = get_method(method).config_cls(batch_sizes=(8, 16), lrs=(5e-2, 1e-5), search_epochs=4, epochs=6)
    fast = fit(method, train_set, N_CLASSES, N_DOMAINS, config, seed=3)
    slow = fit(method, train_set, N_CLASSES, N_DOMAINS, config, seed=3, lockstep=False)
    assert fast.hparams == slow.hparams
    assert fast.hparams.lr == 5e-2
    np.testing.assert_allclose(fast.cv["accuracy"], slow.cv["accuracy"], atol=0.01)
    assert fast.cv[["batch_size", "lr", "fold"]].equals(slow.cv[["batch_size", "lr", "fold"]])
    f1 = [f1_score(test_set.y, predict(r.model, test_set.x), average="macro") for r in (fast, slow)]
    assert abs(f1[0] - f1[1]) <= 0.01
    assert f1[0] > 1.5 / N_CLASSES  # the task is learnable: well above chance


def test_search_table_matches_per_config_table() -> None:
    data = _data(150, 10, 4)
    config = get_method("unified").config_cls(batch_sizes=(4, 32), lrs=(1e-2, 1e-3, 1e-4), search_epochs=2)
    hp_fast, cv_fast = search("unified", data, N_CLASSES, N_DOMAINS, config, seed=5)
    hp_slow, cv_slow = search("unified", data, N_CLASSES, N_DOMAINS, config, seed=5, lockstep=False)
    assert len(cv_fast) == 2 * 3 * 3
    np.testing.assert_allclose(cv_fast["accuracy"], cv_slow["accuracy"], atol=1e-9)
    assert hp_fast == hp_slow


def test_capability_flag_is_declared_not_inherited() -> None:
    unified = get_method("unified")
    assert ls.supports_lockstep(unified)
    assert ls.supports_lockstep(get_method("groupdro"))
    assert ls.supports_lockstep(get_method("moe"))
    sub = type("Sub", (unified,), {})  # e.g. a probe with an extra loss term
    assert not ls.supports_lockstep(sub)
    assert not ls.supports_lockstep(get_method("dann"))


def test_unknown_optimizer_is_rejected() -> None:
    data = _data(40, 4, 0)
    config = get_method("unified").config_cls(optimizer="rmsprop")
    with pytest.raises(ValueError, match="rmsprop"):
        ls.train_model("unified", data, make_spec(data, N_CLASSES, N_DOMAINS), config, HParams(8, 1e-3, 1), 0)


@pytest.mark.parametrize("sensitive", ["site", "density"])
def test_groupdro_runs_match_their_own_training(sensitive: str) -> None:
    # A large eta makes the adversary's weights matter; density has unknown (-1) rows.
    rng = np.random.default_rng(3)
    base = _data(203, 12, 5)
    density = np.where(rng.random(203) < 0.3, -1, rng.integers(0, 4, 203))
    data = ArrayData(base.x, base.y, rng.integers(0, 4, 203), base.patient, {"density": density})
    cls = get_method("groupdro")
    config = cls.config_cls(sensitive=sensitive, eta=0.5)
    splits = cv_folds(data, 3, 0)
    specs = [make_spec(data.take(tr), N_CLASSES, 4, sensitive) for tr, _ in splits]
    init = torch.stack([ls._fold_init(cls, s, config, 7 + f) for f, s in enumerate(specs)])
    weights = torch.tensor([s.class_weights for s in specs], dtype=torch.float32)
    dro = DroSpec(torch.from_numpy(data.group_index(sensitive)), specs[0].n_groups, 0.5)
    x, y = ls.augment(data.x), torch.from_numpy(data.y)
    for bs in (3, 8):
        group = ls.RunGroup([tr for tr, _ in splits], weights, init, [7, 8, 9], (1e-2, 1e-3), bs, 3, dro)
        trained = ls.train_group(x, y, group, config)
        for f, (tr, _) in enumerate(splits):
            for j, lr in enumerate((1e-2, 1e-3)):
                ref = train("groupdro", data.take(tr), specs[f], config, HParams(bs, lr, 3), 7 + f)
                torch.testing.assert_close(trained[f, j], ls.linear_weights(ref), atol=2e-6, rtol=1e-5)


def test_groupdro_group_codes_beyond_the_spec_are_rejected() -> None:
    data = _data(40, 4, 0)
    data = ArrayData(data.x, data.y, np.full(40, 5), data.patient)  # site 5 of only 2 domains
    cls = get_method("groupdro")
    with pytest.raises(ValueError, match="fewer than 2 groups"):
        dro_spec(cls, data, cls.config_cls(), make_spec(data, N_CLASSES, N_DOMAINS))


@pytest.mark.parametrize("bs", [3, 8])
def test_moe_runs_match_their_own_training(bs: int) -> None:
    # Four sites, unequal folds: the analytic mixture gradient against autograd, run by run.
    rng = np.random.default_rng(6)
    base = _data(203, 12, 7)
    data = ArrayData(base.x, base.y, rng.integers(0, 4, 203), base.patient)
    cls = get_method("moe")
    config = cls.config_cls(lambda_gate=0.7, lambda_expert=1.3)
    splits = cv_folds(data, 3, 0)
    specs = [make_spec(data.take(tr), N_CLASSES, 4) for tr, _ in splits]
    init = torch.stack([ls._fold_init(cls, s, config, 7 + f) for f, s in enumerate(specs)])
    weights = torch.tensor([s.class_weights for s in specs], dtype=torch.float32)
    moe = ls.moe_spec(cls, data, config, specs[0])
    x, y = ls.augment(data.x), torch.from_numpy(data.y)
    group = ls.RunGroup([tr for tr, _ in splits], weights, init, [7, 8, 9], (1e-2, 1e-3), bs, 3, None, moe)
    trained = ls.train_group(x, y, group, config)
    for f, (tr, _) in enumerate(splits):
        for j, lr in enumerate((1e-2, 1e-3)):
            ref = train("moe", data.take(tr), specs[f], config, HParams(bs, lr, 3), 7 + f)
            assert not torch.equal(ls.linear_weights(ref), init[f])
            torch.testing.assert_close(trained[f, j], ls.linear_weights(ref), atol=2e-6, rtol=1e-5)


def test_moe_search_and_retrain_agree_with_per_config_path() -> None:
    rng = np.random.default_rng(8)
    train_set, test_set = _data(300, 16, 1, shift=1.5), _data(200, 16, 2, shift=1.5)
    train_set = ArrayData(train_set.x, train_set.y, rng.integers(0, 3, 300), train_set.patient)
    config = get_method("moe").config_cls(batch_sizes=(8, 16), lrs=(5e-2, 1e-5), search_epochs=4, epochs=6)
    fast = fit("moe", train_set, N_CLASSES, 3, config, seed=3)
    slow = fit("moe", train_set, N_CLASSES, 3, config, seed=3, lockstep=False)
    assert fast.hparams == slow.hparams == HParams(fast.hparams.batch_size, 5e-2, 6)
    np.testing.assert_allclose(fast.cv["accuracy"], slow.cv["accuracy"], atol=0.01)
    f1 = [f1_score(test_set.y, predict(r.model, test_set.x), average="macro") for r in (fast, slow)]
    assert abs(f1[0] - f1[1]) <= 0.01 and f1[0] > 1.5 / N_CLASSES


def test_fast_protocol_agrees_with_the_dataloader_baseline() -> None:
    """The benchmark's straightforward baseline (a DataLoader loop per configuration and fold)
    and the lockstep protocol choose the same clearly best learning rate and reach the same F1."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "baseline_grid.py"
    spec = importlib.util.spec_from_file_location("baseline_grid", path)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    train_set, test_set = _data(1200, 16, 5, shift=1.0), _data(3000, 16, 6, shift=1.0)
    # Six seeds of this setup: the same choice every time, F1 apart by 0.004 at most.
    config = get_method("unified").config_cls(batch_sizes=(16, 32), lrs=(3e-3, 1e-5), search_epochs=4,
                                              epochs=30)
    best, means, probe = baseline.protocol(train_set, N_CLASSES, config.batch_sizes, config.lrs,
                                           config.search_epochs, config.epochs)
    fast = fit("unified", train_set, N_CLASSES, N_DOMAINS, config)
    assert best == (fast.hparams.batch_size, fast.hparams.lr)
    assert best[1] == 3e-3  # 1e-5 barely leaves the initialisation: clearly the worse one
    with torch.inference_mode():
        base_pred = probe(torch.from_numpy(test_set.x)).argmax(1).numpy()
    f1 = [f1_score(test_set.y, p, average="macro") for p in (base_pred, predict(fast.model, test_set.x))]
    assert abs(f1[0] - f1[1]) <= 0.01, f1
    assert f1[1] > 1.5 / N_CLASSES
