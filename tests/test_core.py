from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from strategies.base import weighted_cross_entropy
from strategies.core import ArrayData, class_weights, predict
from strategies.protocol import cv_folds, fit, search


def _toy(n=240, d=6, seed=0, sep=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, d)) * sep
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    patient = np.repeat(np.arange(n // 2), 2)
    return ArrayData(x, y, np.zeros(n, dtype=np.int64), patient)


def test_class_weights_are_inverse_class_percentages():
    y = np.array([0, 0, 0, 1, 2, 2])
    # N / (C_present * n_c): 6/(3*3), 6/(3*1), 6/(3*2)
    np.testing.assert_allclose(class_weights(y, 4), [2 / 3, 2.0, 1.0, 0.0])


def test_weighted_cross_entropy_is_mean_over_n():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = torch.tensor([0, 1, 1])
    w = torch.tensor([0.5, 2.0])
    per = F.cross_entropy(logits, y, reduction="none")
    expected = (0.5 * per[0] + 2.0 * per[1] + 2.0 * per[2]) / 3
    assert torch.isclose(weighted_cross_entropy(logits, y, w), expected)


def test_probe_learns_and_is_reproducible():
    data = _toy()
    a = fit("unified", data, 3, 1, do_search=False, seed=3)
    b = fit("unified", data, 3, 1, do_search=False, seed=3)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert (predict(a.model, data.x) == data.y).mean() > 0.9


def test_cv_folds_never_split_a_patient():
    data = _toy()
    folds = cv_folds(data, 3, seed=0)
    assert len(folds) == 3
    for tr, va in folds:
        assert not set(data.patient[tr]) & set(data.patient[va])


def test_search_covers_the_grid_and_picks_the_best_mean():
    data = _toy(n=120)
    from strategies.unified import UnifiedConfig

    cfg = UnifiedConfig(batch_sizes=(8, 32), lrs=(1e-2, 1e-5), search_epochs=3, epochs=5)
    hp, cv = search("unified", data, 3, 1, cfg, folds=3, seed=0)
    assert len(cv) == 2 * 2 * 3
    means = cv.groupby(["batch_size", "lr"])["accuracy"].mean()
    assert (hp.batch_size, hp.lr) == means.idxmax() and hp.epochs == 5
    assert hp.lr == 1e-2  # 1e-5 for 3 epochs cannot beat it on separable data


def test_group_index_and_concat_fill_missing_attributes():
    from strategies.core import concat

    a = ArrayData(np.zeros((2, 1), np.float32), np.array([0, 1]), np.array([0, 0]), np.array(["p", "q"]),
                  {"density": np.array([1, 3])})
    b = ArrayData(np.zeros((1, 1), np.float32), np.array([1]), np.array([1]), np.array(["r"]))
    both = concat([a, b])
    np.testing.assert_array_equal(both.group_index("density"), [1, 3, -1])
    np.testing.assert_array_equal(both.group_index("site"), [0, 0, 1])
    np.testing.assert_array_equal(both.group_index("age_band"), [-1, -1, -1])


def _adam_pair(weight_decay=1e-3):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
            for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam([{"params": n[0].parameters()}, {"params": n[2].parameters(), "lr": 3e-2}],
                             lr=1e-2, weight_decay=weight_decay, fused=True) for n in nets]
    return nets, opts


def _step_pair(nets, opts, steps: int, shape: tuple[int, int]) -> None:
    """The same steps on both nets: ``Adam.step`` on the first, `optimizer_step` on the second."""
    from strategies.fused_adam import optimizer_step

    for i in range(steps):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(i))
        for net, opt, step in zip(nets, opts, (lambda o: o.step(), optimizer_step), strict=True):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            step(opt)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_direct_fused_adam_step_equals_adam_step_exactly():
    nets, opts = _adam_pair()
    _step_pair(nets, opts, 25, (4, 7))
    sa, sb = opts[0].state_dict(), opts[1].state_dict()
    for k in sa["state"]:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(sa["state"][k][name], sb["state"][k][name])


def test_direct_step_on_input_major_weights_equals_adam_step_exactly():
    """A weight stored (in, out) (`input_major_`): the kernel runs on its memory order."""
    from strategies.base import input_major_

    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        nets.append(torch.nn.Sequential(torch.nn.Linear(96, 64), torch.nn.ReLU(), torch.nn.Linear(64, 3)))
        input_major_(nets[-1], 96)
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2, weight_decay=1e-3, fused=True) for n in nets]
    _step_pair(nets, opts, 15, (8, 96))
    weight = nets[1][0].weight
    state = opts[1].state[weight]
    assert weight.grad.stride() == state["exp_avg"].stride() == state["exp_avg_sq"].stride() == (1, 64)
    assert torch.equal(opts[0].state[nets[0][0].weight]["exp_avg_sq"], state["exp_avg_sq"])


def test_direct_step_counts_skipped_parameters_and_reloaded_state_as_adam_does():
    """Steps where the last layer gets no gradient, then both optimizers reloaded mid-run."""
    from strategies.fused_adam import optimizer_step

    nets, opts = _adam_pair()
    for i in range(20):
        if i == 10:  # a checkpoint's state: step counts no longer views of one buffer
            for opt in opts:
                opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(i))
        for net, opt, step in zip(nets, opts, (lambda o: o.step(), optimizer_step), strict=True):
            opt.zero_grad()
            out = net[0](x) if i % 3 == 0 else net(x)  # net[2] skipped on every third step
            out.pow(2).sum().backward()
            step(opt)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    sa, sb = opts[0].state_dict()["state"], opts[1].state_dict()["state"]
    assert [float(sb[k]["step"]) for k in sorted(sb)] == [20, 20, 13, 13]
    assert all(torch.equal(sa[k]["step"], sb[k]["step"]) for k in sa)


@pytest.mark.parametrize("lr", [1e-2, 3e-2])
def test_direct_step_of_two_optimizers_at_once_equals_their_own_steps(lr):
    """One call for a model's and a discriminator's optimizers (one kernel call at equal lr)."""
    from strategies.fused_adam import optimizer_step

    nets, _ = _adam_pair()
    pairs = [(torch.optim.Adam(n[0].parameters(), lr=1e-2, fused=True),
              torch.optim.Adam(n[2].parameters(), lr=lr, fused=True)) for n in nets]
    for i in range(15):
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(i))
        for net, (first, second), together in zip(nets, pairs, (False, True), strict=True):
            first.zero_grad()
            second.zero_grad()
            net(x).pow(2).sum().backward()
            if together:
                optimizer_step(first, second)
            else:
                first.step()
                second.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)


def test_direct_step_checks_for_hooks_at_every_step():
    from strategies.fused_adam import optimizer_step

    nets, (opt, _) = _adam_pair()
    nets[0](torch.ones(1, 7)).sum().backward()
    optimizer_step(opt)  # the parameters are checked and remembered as plain here
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    optimizer_step(opt)
    assert calls == [1]


def test_step_counts_of_one_buffer_advance_together_and_others_one_by_one():
    from strategies.fused_adam import increment

    buffer = torch.zeros(3)
    increment(list(buffer.unbind()))
    separate = [torch.zeros(()) for _ in range(3)]
    increment(separate)
    partial = list(torch.zeros(3).unbind())[:2]  # a subset: the buffer's last count must not move
    increment(partial)
    assert buffer.tolist() == [1, 1, 1] and [float(s) for s in separate] == [1, 1, 1]
    assert partial[0]._base.tolist() == [1, 1, 0]


def test_direct_step_defers_to_step_for_hooks_and_other_optimizers():
    from strategies.fused_adam import optimizer_step

    nets, (opt, _) = _adam_pair()
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    nets[0](torch.ones(1, 7)).sum().backward()
    optimizer_step(opt)
    assert calls == [1]
    sgd = torch.optim.SGD(nets[1].parameters(), lr=0.1)
    before = [p.detach().clone() for p in nets[1].parameters()]
    nets[1](torch.ones(1, 7)).sum().backward()
    optimizer_step(sgd)
    for p, b0 in zip(nets[1].parameters(), before, strict=True):
        torch.testing.assert_close(p, b0 - 0.1 * p.grad)
