"""FADES: the multi-class CMI estimator against the reference binary form, and the method's mechanics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from strategies.base import Batch, TaskSpec, get_method
from strategies.core import ArrayData, predict
from strategies.fades import Fades, FadesConfig
from strategies.fades_cmi import conditional_mutual_information, entropy
from strategies.protocol import fit

EPS = 1e-7


def reference_binary_cmi(p: torch.Tensor, s: torch.Tensor, beta: float) -> torch.Tensor:
    """Independent oracle: the arithmetic of ``CMI_loss`` in Taeuk-Jang/FADES ``utils.py``.

    ``p[i, j]`` is sigmoid(cls([z_y_i, z_r_j])), i.e. P(y = 1); ``s`` is binary.
    """
    p = p[..., None]
    n = p.shape[0]
    p_agg = p.mean(0)
    h_z = -(p_agg * torch.log(p_agg + EPS) + (1 - p_agg) * torch.log(1 - p_agg + EPS)).mean()
    idx = s.view(-1) == 1
    p1 = p[idx, :][:, idx, :].mean(0)
    p0 = p[~idx, :][:, ~idx, :].mean(0)
    h_za = (p1 * torch.log(p1 + EPS) + (1 - p1) * torch.log(1 - p1 + EPS)).sum() + (
        p0 * torch.log(p0 + EPS) + (1 - p0) * torch.log(1 - p0 + EPS)
    ).sum()
    h_za = h_za / -n
    return (1 - beta) * h_z - h_za


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.3])
def test_cmi_reduces_to_reference_binary_form(seed: int, beta: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 8 + 7 * seed
    logit = 3 * torch.randn(n, n, generator=gen, dtype=torch.float64)
    s = (torch.rand(n, generator=gen) < 0.3 + 0.1 * seed / 6).long()
    s[0], s[1] = 0, 1  # both groups present, as the reference assumes
    # A two-logit softmax with logits (0, l) is sigmoid(l): the heads' K=2 case.
    probs = torch.stack([torch.zeros_like(logit), logit], dim=-1).softmax(-1)
    ours = conditional_mutual_information(probs, s, beta)
    ref = reference_binary_cmi(torch.sigmoid(logit), s, beta)
    assert float(ours) == pytest.approx(float(ref), abs=1e-6)


def _plugin_mi(p_given_s: torch.Tensor, s: torch.Tensor) -> float:
    """Plug-in I(ŷ; s) when ŷ ~ p_given_s[s]: H(mixture) - E_s H(p(·|s))."""
    w = torch.bincount(s, minlength=p_given_s.shape[0]).double() / s.numel()
    mix = (w[:, None] * p_given_s).sum(0)
    return float(entropy(mix) - (w * entropy(p_given_s)).sum())


def test_cmi_zero_without_information_and_positive_with_it() -> None:
    gen = torch.Generator().manual_seed(0)
    n, k, m = 120, 3, 4
    s = torch.randint(0, m, (n,), generator=gen)
    # Prediction depends on z_r only (column j): s adds nothing beyond z_r -> exactly 0.
    only_r = torch.randn(n, k, generator=gen, dtype=torch.float64).softmax(-1)
    zero = conditional_mutual_information(only_r[None].expand(n, n, k), s, beta=0.0)
    assert abs(float(zero)) < 1e-9
    # Prediction varies with the marginalised latent, independently of s -> small, >= ~0.
    noise = (2 * torch.randn(n, n, k, generator=gen, dtype=torch.float64)).softmax(-1)
    small = float(conditional_mutual_information(noise, s, beta=0.0))
    assert -1e-3 < small < 0.05
    # Prediction set by s through z_a (q_ij = p(y | s_i)): the estimate is I(ŷ; s) > 0.
    p_given_s = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3] * 3],
                             dtype=torch.float64)
    leak = p_given_s[s][:, None, :].expand(n, n, k)
    big = float(conditional_mutual_information(leak, s, beta=0.0))
    assert big == pytest.approx(_plugin_mi(p_given_s, s), abs=1e-6)
    assert big > 10 * max(small, 1e-3)


def test_cmi_single_group_is_minus_beta_entropy() -> None:
    """One value of s (a one-site federated client): the CMI part vanishes identically."""
    gen = torch.Generator().manual_seed(1)
    probs = torch.randn(10, 10, 3, generator=gen, dtype=torch.float64).softmax(-1)
    s = torch.full((10,), 4)
    expected = -0.5 * entropy(probs.mean(0)).mean()
    assert float(conditional_mutual_information(probs, s, 0.5)) == pytest.approx(float(expected), abs=1e-12)
    assert float(conditional_mutual_information(probs[:0, :0], s[:0], 0.5)) == 0.0


def _model(d: int = 12, c: int = 3, m: int = 4, **cfg: object) -> Fades:
    torch.manual_seed(0)
    config = replace(FadesConfig(), latent_dim=4, head_hidden=16, **cfg)
    model = Fades(TaskSpec(in_dim=d, n_classes=c, n_domains=m, class_weights=(1.0,) * c), config)
    model.configure_optimizer(config.lr)
    return model


def _batch(n: int = 16, d: int = 12, c: int = 3, m: int = 4, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=gen)
    group = torch.randint(0, m, (n,), generator=gen)
    return Batch(torch.randn(n, d, generator=gen), y, group, group)


def test_config_is_the_papers_fixed_protocol() -> None:
    cfg = get_method("fades").config_cls()
    assert (cfg.searchable, cfg.batch_size, cfg.lr, cfg.epochs) == (False, 32, 1e-4, 30)
    assert (cfg.alpha, cfg.beta, cfg.lambda_cls, cfg.lambda_tc, cfg.lambda_fair) == (0.5, 0.5, 1e3, 1e2, 1e2)


def test_updates_run_and_forward_gives_class_logits() -> None:
    model, batch = _model(), _batch()
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    main_ids = {id(p) for g in model.optimizer.param_groups for p in g["params"]}
    assert not main_ids & {id(p) for p in model.discriminator.parameters()}
    for _ in range(3):
        logs = model.update(batch)
        assert all(np.isfinite(v) for v in logs.values()) and {"loss", "tc", "disc"} <= logs.keys()
    disc_after = list(model.discriminator.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, disc_after, strict=True))
    model.eval()
    assert model(batch.x).shape == (16, 3)
    loss, logs = model.objective(batch)
    assert loss.ndim == 0 and "loss" in logs


def test_fairness_term_switches_on_from_the_second_epoch() -> None:
    model, batch = _model(epochs=10), _batch()
    model.begin_epoch(0.0)
    first = model.update(batch)
    assert "fair" not in first and np.isfinite(first["tc"])  # TC is on from the start
    model.begin_epoch(0.05)  # still inside epoch 0 of 10
    assert "fair" not in model.update(batch)
    model.begin_epoch(1 / 10)
    second = model.update(batch)
    assert "fair" in second and second["fair"] != 0.0
    # The term enters the loss with weight lambda_fair.
    model.eval()
    on_loss, on_logs = model.objective(batch)
    model.begin_epoch(0.0)
    off_loss, _ = model.objective(batch)
    gap = float((on_loss - off_loss).detach())
    assert gap == pytest.approx(model.config.lambda_fair * on_logs["fair"], rel=1e-4)


def test_unknown_group_rows_are_excluded_from_sensitive_terms() -> None:
    model, batch = _model(), _batch()
    model.begin_epoch(0.5)
    model.eval()  # posterior means: no sampling noise, so subsets are comparable
    group = batch.group.clone()
    group[::3] = -1
    keep = group >= 0
    with torch.no_grad():
        with_unknown, _ = model.terms(Batch(batch.x, batch.y, batch.domain, group))
        known_only, _ = model.terms(Batch(batch.x[keep], batch.y[keep], batch.domain[keep], group[keep]))
    for key in ("ce_s", "fair"):
        assert float(with_unknown[key]) == pytest.approx(float(known_only[key]), abs=1e-5)
    # Unknown rows still count in the label and ELBO terms.
    assert float(with_unknown["wce_y"]) != pytest.approx(float(known_only["wce_y"]), abs=1e-6)
    model.train()
    all_unknown = Batch(batch.x, batch.y, batch.domain, torch.full_like(group, -1))
    logs = model.update(all_unknown)
    assert logs["ce_s"] == 0.0 and logs["fair"] == 0.0 and np.isfinite(logs["loss"])


def test_loss_decreases_on_a_separable_toy_problem() -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 32, 12
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=gen) * 0.3 + 2.0 * (2 * y[:, None] - 1).float()
    model = _model(d=d, c=2, m=2, lr=1e-3)
    batch = Batch(x, y, y, torch.arange(n) % 2)
    model.begin_epoch(0.5)
    losses = [model.update(batch)["loss"] for _ in range(50)]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.9


def test_fit_trains_through_the_core() -> None:
    rng = np.random.default_rng(0)
    n, d = 60, 10
    y = rng.integers(0, 3, n)
    data = ArrayData(rng.normal(size=(n, d)).astype(np.float32), y, rng.integers(0, 3, n), np.arange(n))
    config = replace(FadesConfig(), epochs=2, latent_dim=4, head_hidden=16)
    result = fit("fades", data, 3, 3, config, do_search=False)
    assert result.cv.empty and (result.hparams.batch_size, result.hparams.lr) == (32, 1e-4)
    assert predict(result.model, data.x).shape == (n,)


def test_fairness_gradient_reaches_latents_not_heads() -> None:
    model, batch = _model(), _batch()
    z = torch.randn(16, 4 * model.config.latent_dim, requires_grad=True)
    model.fairness(z, batch.y, batch.group).backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    heads = [*model.head_y.parameters(), *model.head_s.parameters()]
    assert all(p.grad is None for p in heads)


def test_split_first_layer_equals_the_head_on_the_pair_grid() -> None:
    # The fast path splits the head's first layer over the concatenation; the oracle
    # runs the head module itself on every explicit pair [z_a[i], z_r[j]].
    from strategies.fades import mlp
    from strategies.fades_cmi import frozen_pair_probs, pair_grid

    torch.manual_seed(0)
    head = mlp([10, 16, 8, 3])
    z_a, z_r = torch.randn(7, 4, requires_grad=True), torch.randn(7, 6, requires_grad=True)
    fast = frozen_pair_probs(head, z_a, z_r)
    with torch.no_grad():
        ref = head(pair_grid(z_a, z_r)).softmax(-1)
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    # The hand-written backward against autograd through the head on the explicit grid.
    upstream = torch.randn_like(fast)
    fast.backward(upstream)
    ref_a, ref_r = (z_a.detach().clone().requires_grad_(), z_r.detach().clone().requires_grad_())
    frozen = [p.detach() for p in head.parameters()]
    grid = pair_grid(ref_a, ref_r)
    for i in range(0, len(frozen), 2):
        grid = torch.nn.functional.linear(grid, frozen[i], frozen[i + 1])
        grid = torch.nn.functional.leaky_relu(grid, 0.2) if i + 2 < len(frozen) else grid
    grid.softmax(-1).backward(upstream)
    torch.testing.assert_close(z_a.grad, ref_a.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(z_r.grad, ref_r.grad, atol=1e-6, rtol=1e-5)
    assert all(p.grad is None for p in head.parameters())


@pytest.mark.parametrize(("n", "classes", "groups"), [(1, 2, 1), (3, 5, 2), (9, 4, 3), (32, 8, 8), (5, 1, 2),
                                                     (7, 3, 2), (6, 6, 3), (4, 10, 4)])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_hand_written_cmi_gradient_equals_autograd_on_the_explicit_grid(
    n: int, classes: int, groups: int, beta: float,
) -> None:
    # Oracle: the head module on every explicit pair [z_a[i], z_r[j]], then the
    # estimator, differentiated by autograd with respect to both latents.
    from strategies.fades import mlp
    from strategies.fades_cmi import pair_cmi_grad, pair_grid

    torch.manual_seed(n + classes)
    head = mlp([10, 16, classes])
    z_a, z_r = torch.randn(n, 4, requires_grad=True), torch.randn(n, 6, requires_grad=True)
    s = torch.randint(0, groups, (n,))
    want = conditional_mutual_information(head(pair_grid(z_a, z_r)).softmax(-1), s, beta)
    d_a, d_r = torch.autograd.grad(want, [z_a, z_r])
    with torch.no_grad():
        got, g_a, g_r = pair_cmi_grad([head[0], head[2]], z_a, z_r, s, beta)
    assert float(got) == pytest.approx(float(want), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(g_a, d_a, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(g_r, d_r, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 1e-2), ("sgd", 0.0)])
def test_hand_written_update_follows_autograd_step_by_step(optimizer: str, weight_decay: float) -> None:
    # `Fades.update` writes the gradients by hand (`strategies.fades_update`); autograd on
    # `terms` and `discriminator_loss` (`autograd_update`) is the oracle, with the same
    # random draws, over steps with and without the fairness term and with unknown groups.
    fast, slow = (_model(optimizer=optimizer, weight_decay=weight_decay) for _ in range(2))
    for m in (fast, slow):
        m.class_weights = torch.tensor([0.5, 1.0, 2.0])
        m.configure_optimizer(1e-3)
    for step in range(12):
        for m in (fast, slow):
            m.begin_epoch(0.0 if step < 4 else 0.5)  # the fairness term joins at step 4
        b = _batch(n=10, seed=20 + step)
        b.group[step % 3 :: 4] = -1
        if step == 7:
            b.group[:] = -1  # no known group: CE(s) and both CMI terms vanish
        torch.manual_seed(step)
        got = fast.update(b)
        torch.manual_seed(step)
        want = slow.autograd_update(b)
        assert got.keys() == want.keys()
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, key)
    for (name, p), q in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert "fair" in got


def test_update_in_eval_mode_keeps_autograd_path() -> None:
    model = _model()
    model.eval()  # no sampling noise: the reference path, not the hand-written one
    logs = model.update(_batch())
    assert np.isfinite(logs["loss"])
