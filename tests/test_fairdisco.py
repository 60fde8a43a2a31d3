"""FairDisCO: confusion and contrastive losses by hand, the stop-gradient head, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from strategies.base import Batch, TaskSpec
from strategies.core import ArrayData, predict
from strategies.fairdisco import FairDisCo, FairDisCoConfig, confusion_loss, supervised_contrastive_loss
from strategies.protocol import fit

D, C, G = 12, 3, 4


def _model(seed: int = 0, **changes) -> FairDisCo:
    torch.manual_seed(seed)
    spec = TaskSpec(in_dim=D, n_classes=C, n_domains=G, class_weights=(1.0,) * C)
    return FairDisCo(spec, FairDisCoConfig(bottleneck=16, proj_hidden=32, proj_dim=8, **changes))


def _batch(n: int = 10, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen)
    y = torch.randint(0, C, (n,), generator=gen)
    domain = torch.randint(0, G, (n,), generator=gen)
    return Batch(x, y, domain, domain.clone())


def test_defaults_are_the_reference_ones():
    cfg = FairDisCoConfig()
    assert (cfg.alpha, cfg.beta, cfg.temperature, cfg.bottleneck) == (1.0, 0.8, 0.1, 256)


def test_confusion_loss_is_minimal_with_zero_gradient_at_the_uniform_distribution():
    k = 5
    # Equal logits within a row are the uniform distribution, whatever their level.
    uniform = (torch.randn(6, 1) * 3).repeat(1, k).requires_grad_()
    loss = confusion_loss(uniform)
    assert float(loss.detach()) == pytest.approx(math.log(k))
    (grad,) = torch.autograd.grad(loss, uniform)
    assert grad.abs().max() < 1e-7
    torch.manual_seed(0)
    for _ in range(20):
        logits = torch.randn(6, k) * 2
        p = logits.softmax(dim=1)
        hand = -torch.log(p).mean()  # mean over rows and classes of -log p
        torch.testing.assert_close(confusion_loss(logits), hand)
        assert float(confusion_loss(logits)) > math.log(k)


def test_confusion_loss_mask_keeps_only_selected_rows():
    logits = torch.randn(6, 3)
    mask = torch.tensor([True, False, True, True, False, False])
    torch.testing.assert_close(confusion_loss(logits, mask), confusion_loss(logits[mask]))
    assert float(confusion_loss(logits, torch.zeros(6, dtype=torch.bool))) == 0.0


def test_supervised_contrastive_loss_matches_a_hand_computation():
    # Points at angles 0°, ~53°, 90°, ~143°; the first is scaled to check normalisation.
    z = torch.tensor([[2.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-0.8, 0.6]])
    y = torch.tensor([0, 0, 1, 1])
    t = 0.5
    # Cosines: s01 = 0.6, s02 = 0, s03 = -0.8, s12 = 0.8, s13 = 0, s23 = 0.6.
    e = math.exp
    pair_01 = -math.log(e(0.6 / t) / (e(0.6 / t) + e(0.0 / t) + e(-0.8 / t)))  # negatives 2, 3
    pair_10 = -math.log(e(0.6 / t) / (e(0.6 / t) + e(0.8 / t) + e(0.0 / t)))
    pair_23 = -math.log(e(0.6 / t) / (e(0.6 / t) + e(0.0 / t) + e(0.8 / t)))  # negatives 0, 1
    pair_32 = -math.log(e(0.6 / t) / (e(0.6 / t) + e(-0.8 / t) + e(0.0 / t)))
    expected = (pair_01 + pair_10 + pair_23 + pair_32) / 4
    assert float(supervised_contrastive_loss(z, y, t)) == pytest.approx(expected, rel=1e-6)


def _pairwise_oracle(z: torch.Tensor, y: list[int], t: float) -> float:
    """Table 1 of the paper, as plain Python loops over ordered positive pairs."""
    rows = [[float(v) for v in r] for r in z]
    units = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in rows]
    cos = [[sum(a * b for a, b in zip(ri, rj, strict=True)) for rj in units] for ri in units]
    terms = []
    for i in range(len(y)):
        negatives = sum(math.exp(cos[i][k] / t) for k in range(len(y)) if y[k] != y[i])
        for j in range(len(y)):
            if j != i and y[j] == y[i]:
                terms.append(-math.log(math.exp(cos[i][j] / t) / (math.exp(cos[i][j] / t) + negatives)))
    return sum(terms) / len(terms) if terms else 0.0


@pytest.mark.parametrize("labels", [[0, 0, 0, 1, 1], [0, 0, 1, 2, 2, 2], [0, 1, 1, 2]])
def test_supervised_contrastive_loss_scores_each_positive_pair_against_negatives(labels):
    # [0, 1, 1, 2]: anchors 0 and 3 have no positive and only serve as negatives.
    z = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(len(labels)))
    got = supervised_contrastive_loss(z, torch.tensor(labels), 0.1)
    assert float(got) == pytest.approx(_pairwise_oracle(z, labels, 0.1), rel=1e-5)


@pytest.mark.parametrize(("n", "labels"), [(1, [0]), (3, [0, 1, 2]), (3, [1, 1, 1])])
def test_supervised_contrastive_loss_degenerate_batches(n, labels):
    z = torch.randn(n, 4, requires_grad=True)
    loss = supervised_contrastive_loss(z, torch.tensor(labels), 0.1)
    # No positive pair, or positives with no negative to be confused with: nothing to learn.
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("labels", [[0, 0, 0, 1, 1], [0, 1, 1, 2], [1, 1, 1], [0, 1, 2], [0, 0]])
def test_supcon_grad_matches_autograd_for_each_stacked_run(labels):
    # The compiled loss and gradient (`supcon_grad`) against autograd on the torch loss,
    # run by run; degenerate label sets (no negative, no positive) included.
    from strategies.fairdisco_grads import supcon_grad

    y = torch.tensor(labels)
    zp = torch.randn(3, len(labels), 6, generator=torch.Generator().manual_seed(len(labels))) * 2
    losses, d_zp = supcon_grad(zp, y, 0.1, 0.7)
    for r in range(3):
        z = zp[r].clone().requires_grad_(True)
        loss = supervised_contrastive_loss(z, y, 0.1)
        (grad,) = torch.autograd.grad(loss, z)
        assert float(losses[r]) == pytest.approx(float(loss), rel=1e-5, abs=1e-7)
        torch.testing.assert_close(d_zp[r], 0.7 * grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n", [2, 7])
def test_stacked_batch_norm_relu_kernels_match_torch_for_each_run(n):
    # The stacked step's compiled BatchNorm(training) + ReLU, forward and backward, against
    # nn.BatchNorm1d and autograd run by run: outputs, running statistics, gradients of
    # the input and of the affine map.
    from strategies._fairdisco_kernels import bn_relu_backward_, bn_relu_forward_

    gen = torch.Generator().manual_seed(n)
    a, d_r = (torch.randn(3, n, 5, generator=gen) * 2 + 1 for _ in range(2))
    gamma, beta = torch.rand(3, 5, generator=gen) + 0.5, torch.randn(3, 5, generator=gen) * 0.3
    run_mean, run_var = torch.randn(3, 5, generator=gen), torch.rand(3, 5, generator=gen) + 0.5
    xhat, r, inv = a.clone(), torch.empty_like(a), torch.empty(3, 5)
    mean_out, var_out = run_mean.clone(), run_var.clone()
    bn_relu_forward_(xhat.numpy(), gamma.numpy(), beta.numpy(), 1e-5, 0.1, n / (n - 1), mean_out.numpy(),
                     var_out.numpy(), inv.numpy(), r.numpy())
    d_a, d_gamma, d_beta = d_r.clone(), torch.empty(3, 5), torch.empty(3, 5)
    bn_relu_backward_(d_a.numpy(), r.numpy(), xhat.numpy(), inv.numpy(), gamma.numpy(), d_gamma.numpy(),
                      d_beta.numpy())
    for k in range(3):
        bn = torch.nn.BatchNorm1d(5, eps=1e-5, momentum=0.1)
        with torch.no_grad():
            bn.weight.copy_(gamma[k]), bn.bias.copy_(beta[k])
            bn.running_mean.copy_(run_mean[k]), bn.running_var.copy_(run_var[k])
        x = a[k].clone().requires_grad_(True)
        out = torch.relu(bn(x))
        torch.testing.assert_close(r[k], out.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean_out[k], bn.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var_out[k], bn.running_var, rtol=1e-5, atol=1e-6)
        grads = torch.autograd.grad(out, (x, bn.weight, bn.bias), d_r[k])
        for got, want in zip((d_a[k], d_gamma[k], d_beta[k]), grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_attribute_head_kernel_matches_autograd_on_its_two_losses():
    # d_conf: the confusion term's logit gradient (α-weighted); d_attr: that plus the
    # attribute cross-entropy's, over the rows with a known group (row weights).
    from strategies._fairdisco_kernels import attribute_grads_

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 4, generator=gen) * 3
    group = torch.tensor([0, 3, -1, 1, 1, -1])
    known = (group >= 0).float()
    row = known / known.sum()
    d_attr, d_conf = torch.empty_like(logits), torch.empty_like(logits)
    attribute_grads_(logits.numpy(), group.clamp(min=0).numpy(), row.numpy(), 0.7, d_attr.numpy(),
                     d_conf.numpy())
    for k in range(2):
        z = logits[k].clone().requires_grad_(True)
        conf = 0.7 * confusion_loss(z, group >= 0)
        ce = F.cross_entropy(z[group >= 0], group[group >= 0])
        (want_conf,) = torch.autograd.grad(conf, z)
        (want_ce,) = torch.autograd.grad(ce, z)
        torch.testing.assert_close(d_conf[k], want_conf, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(d_attr[k], want_conf + want_ce, rtol=1e-5, atol=1e-6)


def test_attribute_cross_entropy_on_detached_h_does_not_reach_the_bottleneck():
    model = _model()
    b = _batch()
    h = model.embed(b.x)
    conf, attr = model.attribute_terms(h, b.group)
    torch.testing.assert_close(attr, F.cross_entropy(model.attribute(h), b.group))
    bottleneck = list(model.bottleneck.parameters())
    for g in torch.autograd.grad(attr, bottleneck, retain_graph=True, allow_unused=True):
        assert g is None or not g.any()
    assert all(g.abs().max() > 0 for g in torch.autograd.grad(attr, model.attribute.parameters(),
                                                              retain_graph=True))
    # The confusion term is the one that shapes h.
    assert all(g.abs().max() > 0 for g in torch.autograd.grad(conf, bottleneck, retain_graph=True))


def test_objective_gradient_on_the_bottleneck_omits_the_attribute_cross_entropy():
    model = _model(seed=1)
    b = _batch(seed=1)
    loss, logs = model.objective(b)
    bottleneck = list(model.bottleneck.parameters())
    total = torch.autograd.grad(loss, bottleneck)
    h = model.embed(b.x)
    cfg = model.config
    model.projection.train()
    shaping = (F.cross_entropy(model.classifier(h), b.y) + cfg.alpha * confusion_loss(model.attribute(h))
               + cfg.beta * supervised_contrastive_loss(model.projection(h), b.y, cfg.temperature))
    for t, s in zip(total, torch.autograd.grad(shaping, bottleneck), strict=True):
        torch.testing.assert_close(t, s)
    parts = logs["label"] + cfg.alpha * logs["conf"] + logs["attr"] + cfg.beta * logs["supcon"]
    assert logs["loss"] == pytest.approx(parts, rel=1e-6)


def test_unknown_groups_are_left_out_of_both_attribute_terms():
    model = _model()
    b = _batch(n=12)
    group = b.group.clone()
    group[::4] = -1
    known = group >= 0
    h = model.embed(b.x)
    conf, attr = model.attribute_terms(h, group)
    torch.testing.assert_close(conf, confusion_loss(model.attribute(h[known])))
    torch.testing.assert_close(attr, F.cross_entropy(model.attribute(h[known]), group[known]))
    _, logs = model.objective(Batch(b.x, b.y, b.domain, torch.full_like(group, -1)))
    assert logs["conf"] == 0.0 and logs["attr"] == 0.0 and logs["label"] > 0.0


def test_updates_change_the_model_and_predictions_have_class_shape():
    model = _model()
    model.configure_optimizer(1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    for i in range(3):
        logs = model.update(_batch(seed=i))
        assert {"loss", "label", "conf", "attr", "supcon"} <= set(logs)
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values())
    assert model.update(_batch(n=1, seed=9))["supcon"] == 0.0  # BatchNorm cannot take one row
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(7, D)).shape == (7, C)


@pytest.mark.parametrize("sensitive", ["site", "density"])
def test_fit_trains_fairdisco_through_the_core(sensitive):
    rng = np.random.default_rng(0)
    n = 97  # batches of 32 leave a one-row remainder
    y = rng.integers(0, C, n)
    x = (rng.normal(size=(C, D))[y] * 3 + rng.normal(size=(n, D))).astype(np.float32)
    density = np.where(rng.random(n) < 0.3, -1, rng.integers(0, 4, n))
    data = ArrayData(x, y, rng.integers(0, G, n), np.arange(n), {"density": density})
    cfg = FairDisCoConfig(bottleneck=32, proj_hidden=32, proj_dim=16, epochs=15, sensitive=sensitive)
    res = fit("fairdisco", data, C, G, cfg, do_search=False)
    assert res.model.attribute.out_features == {"site": G, "density": 4}[sensitive]
    assert (predict(res.model, data.x) == data.y).mean() > 0.8


@pytest.mark.parametrize(("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 1e-2), ("sgd", 0.0)])
def test_hand_written_update_follows_autograd_step_by_step(optimizer, weight_decay):
    # `FairDisCo.update` writes the gradient of `objective` by hand (BatchNorm, SupCon,
    # the attribute head's two uses); autograd on `objective` is the oracle.
    from strategies.base import Method

    fast, slow = (_model(seed=4, optimizer=optimizer, weight_decay=weight_decay) for _ in range(2))
    for m in (fast, slow):
        m.configure_optimizer(0.02)
    for step in range(15):
        b = _batch(n=1 if step == 4 else 11, seed=20 + step)  # one row: no SupCon, no BatchNorm
        b.group[step % 3 :: 4] = -1
        if step == 8:
            b.group[:] = -1
        got, want = fast.update(b), Method.update(slow, b)
        for key in ("loss", "label", "conf", "attr", "supcon"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        # The bias before BatchNorm has a zero gradient up to round-off, which Adam's
        # normalisation turns into full-size steps of noise; BatchNorm removes it.
        if name != "projection.0.bias" or optimizer == "sgd":
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    for (name, p), q in zip(fast.named_buffers(), slow.buffers(), strict=True):
        if name != "projection.1.running_mean":  # tracks that bias
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    x = _batch(n=30, seed=99).x
    torch.testing.assert_close(fast.eval()(x), slow.eval()(x), rtol=1e-4, atol=1e-5)
