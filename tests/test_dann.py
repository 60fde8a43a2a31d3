"""DANN: gradient reversal, λ schedule, group masking and training, against autograd oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, TaskSpec
from strategies.core import ArrayData, predict
from strategies.dann import Dann, DannConfig, grad_reverse, lambda_schedule
from strategies.protocol import fit

D, C, G = 12, 3, 4


def _model(seed: int = 0, **changes) -> Dann:
    torch.manual_seed(seed)
    spec = TaskSpec(in_dim=D, n_classes=C, n_domains=G, class_weights=(1.0,) * C)
    return Dann(spec, DannConfig(hidden=16, **changes))


def _batch(n: int = 10, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen)
    y = torch.randint(0, C, (n,), generator=gen)
    domain = torch.randint(0, G, (n,), generator=gen)
    return Batch(x, y, domain, domain.clone())


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0, 2.5])
def test_grad_reverse_is_identity_forward_and_negated_backward(lam):
    x = torch.randn(5, 3, requires_grad=True)
    w = torch.randn(5, 3)
    out = grad_reverse(x, lam)
    assert torch.equal(out, x)
    (gx,) = torch.autograd.grad((w * out).sum(), x)
    torch.testing.assert_close(gx, -lam * w)


def test_discriminator_gradient_into_the_feature_map_is_reversed_and_scaled():
    model = _model()
    model.begin_epoch(0.07)
    lam = model.lam
    assert 0.3 < lam < 0.9
    b = _batch()
    feats, disc = list(model.features.parameters()), list(model.discriminator.parameters())

    def reversed_loss():
        return model.discriminator_loss(model.embed(b.x), b.group)

    def plain_loss():  # the same term with no reversal layer, written independently
        return F.cross_entropy(model.discriminator(model.embed(b.x)), b.group)

    torch.testing.assert_close(reversed_loss(), plain_loss())
    for r, p in zip(torch.autograd.grad(reversed_loss(), feats), torch.autograd.grad(plain_loss(), feats),
                    strict=True):
        assert p.abs().max() > 0
        torch.testing.assert_close(r, -lam * p)
    # The discriminator itself still descends its loss.
    for r, p in zip(torch.autograd.grad(reversed_loss(), disc), torch.autograd.grad(plain_loss(), disc),
                    strict=True):
        torch.testing.assert_close(r, p)


def test_objective_gradient_is_label_gradient_minus_lambda_domain_gradient():
    model = _model(seed=1)
    model.begin_epoch(0.2)
    b = _batch(seed=1)
    feats = list(model.features.parameters())
    loss, logs = model.objective(b)
    total = torch.autograd.grad(loss, feats)
    label = torch.autograd.grad(F.cross_entropy(model(b.x), b.y), feats)  # unit class weights
    domain = torch.autograd.grad(F.cross_entropy(model.discriminator(model.embed(b.x)), b.group), feats)
    for t, lab, dom in zip(total, label, domain, strict=True):
        torch.testing.assert_close(t, lab - model.lam * dom)
    assert logs["loss"] == pytest.approx(logs["label"] + logs["domain"], rel=1e-6)
    assert logs["lambda"] == model.lam


def test_lambda_schedule_starts_at_zero_rises_and_stays_below_one():
    assert DannConfig().gamma == 10.0
    assert lambda_schedule(0.0, 10.0) == 0.0
    ps = np.linspace(0.0, 0.999, 200)
    lams = [lambda_schedule(float(p), 10.0) for p in ps]
    assert all(b > a for a, b in zip(lams, lams[1:], strict=False))
    assert lams[-1] < 1.0 and lams[-1] > 0.999
    for p, lam in zip(ps, lams, strict=True):  # 2/(1+e^{-x}) - 1 = tanh(x/2)
        assert lam == pytest.approx(math.tanh(5.0 * p), abs=1e-12)
    model = _model()
    assert model.lam == 0.0
    model.begin_epoch(0.5)
    assert model.lam == pytest.approx(math.tanh(2.5))


def test_unknown_groups_are_left_out_of_the_discriminator_term():
    model = _model()
    model.begin_epoch(0.5)
    b = _batch(n=12)
    group = b.group.clone()
    group[::3] = -1
    known = group >= 0
    z = model.embed(b.x)
    got = model.discriminator_loss(z, group)
    logp = F.log_softmax(model.discriminator(z), dim=1)
    rows = torch.nonzero(known).squeeze(1)
    torch.testing.assert_close(got, -logp[rows, group[rows]].mean())
    # Whatever the unknown rows hold, the term does not move.
    x = b.x.clone()
    x[~known] = 10.0 * torch.randn(int((~known).sum()), D)
    torch.testing.assert_close(model.discriminator_loss(model.embed(x), group), got)


def test_a_batch_of_unknown_groups_has_zero_domain_loss_but_keeps_the_label_loss():
    model = _model()
    model.begin_epoch(0.5)
    b = _batch()
    unknown = Batch(b.x, b.y, b.domain, torch.full_like(b.group, -1))
    loss, logs = model.objective(unknown)
    assert logs["domain"] == 0.0
    torch.testing.assert_close(loss, F.cross_entropy(model(b.x), b.y))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_updates_change_the_model_and_predictions_have_class_shape():
    model = _model()
    model.configure_optimizer(1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for i in range(3):
        model.begin_epoch(i / 3)
        logs = model.update(_batch(seed=i))
        assert {"loss", "label", "domain", "lambda"} <= set(logs)
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    model.update(_batch(n=1, seed=9))  # a one-row remainder batch
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(7, D)).shape == (7, C)
        assert model.embed(torch.randn(7, D)).shape == (7, 16)


def _toy(n: int = 90, seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    x = (rng.normal(size=(C, D))[y] * 3 + rng.normal(size=(n, D))).astype(np.float32)
    density = np.where(rng.random(n) < 0.3, -1, rng.integers(0, 4, n))
    return ArrayData(x, y, rng.integers(0, G, n), np.arange(n), {"density": density})


@pytest.mark.parametrize("sensitive", ["site", "density", "age_band"])
def test_fit_trains_dann_through_the_core(sensitive):
    data = _toy()
    cfg = DannConfig(hidden=32, epochs=15, sensitive=sensitive)
    res = fit("dann", data, C, G, cfg, do_search=False)
    assert res.model.discriminator[-1].out_features == {"site": G, "density": 4, "age_band": 3}[sensitive]
    assert res.model.lam == pytest.approx(lambda_schedule(14 / 15, 10.0))
    assert (predict(res.model, data.x) == data.y).mean() > 0.8


@pytest.mark.parametrize(("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 1e-2), ("sgd", 0.0)])
def test_hand_written_update_follows_autograd_step_by_step(optimizer, weight_decay):
    # `Dann.update` writes the gradient of `objective` by hand; autograd on `objective`
    # (the base class's update) is the oracle, over many steps with unknown groups.
    from strategies.base import Method

    fast, slow = (_model(seed=3, optimizer=optimizer, weight_decay=weight_decay) for _ in range(2))
    for m in (fast, slow):
        m.configure_optimizer(0.05)
        m.begin_epoch(0.3)
    for step in range(15):
        b = _batch(n=9, seed=10 + step)
        b.group[step % 3 :: 4] = -1
        if step == 7:
            b.group[:] = -1  # no known group: the discriminator term and its gradient vanish
        got, want = fast.update(b), Method.update(slow, b)
        for key in ("loss", "label", "domain", "lambda"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
