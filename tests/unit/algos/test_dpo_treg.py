"""algo=dpo_treg (calmrl/algos/dpo.py): T-REG's token rewards, its regulariser and its loss, by hand and against
DPO (alpha = 0 is DPO bit for bit); docs/algos/dpo_treg.md."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos.dpo import (
    dpo_pair_loss,
    dpo_treg_loss,
    treg_pair_loss,
    treg_prompts,
    treg_regularizer,
    treg_token_rewards,
)


def test_treg_token_rewards_sign_range_and_hand_value():
    better = torch.tensor([[0.0, -1.0, -2.0, -0.5]])
    worse = torch.tensor([[0.0, -2.0, -1.0, -0.5]])
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    r = treg_token_rewards(better, worse, mask)
    s1 = 1 / (1 + math.exp(-1.0)) - 0.5  # 0.2310586
    assert r[0].tolist() == pytest.approx([0.0, s1, -s1, 0.0], abs=1e-6)
    g = torch.Generator().manual_seed(1)
    b, w = torch.randn(64, 9, generator=g) * 3, torch.randn(64, 9, generator=g) * 3
    r = treg_token_rewards(b, w, torch.ones(64, 9))
    assert (r > -0.5).all() and (r < 0.5).all()
    assert torch.equal(torch.sign(r), torch.sign(b - w))  # positive exactly where the "improve" prompt likes it more


def test_treg_prompts_fill_the_templates():
    b, w = treg_prompts("go north", "Improve: {prompt}", "Worsen: {prompt}")
    assert (b, w) == ("Improve: go north", "Worsen: go north")


def test_treg_regularizer_hand_computed():
    logp = torch.tensor([[0.0, -1.0, -2.0]])
    rhat = torch.tensor([[0.4, 0.2, -0.3]])  # column 0 is prompt: masked out
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    # -sum beta * r_hat * logp = -(0.5*0.2*-1 + 0.5*-0.3*-2) = -(-0.1 + 0.3) = -0.2
    assert treg_regularizer(logp, rhat, mask, 0.5).item() == pytest.approx(-0.2)


def _pairs(p=3, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(2 * p, length, generator=g) * 2).requires_grad_(True)
    mask = torch.zeros(2 * p, length)
    for r in range(2 * p):
        mask[r, 1 + r % 2 : length - (r % 3)] = 1
    ref_seq = -torch.rand(2 * p, generator=g) * 6
    rhat = treg_token_rewards(torch.randn(2 * p, length, generator=g), torch.randn(2 * p, length, generator=g), mask)
    return logp, mask, ref_seq, rhat


def test_dpo_treg_loss_hand_computed_single_pair():
    logp = torch.tensor([[0.0, -1.0, -1.0], [0.0, -2.0, -1.0]])  # chosen row, rejected row
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    ref_seq = torch.tensor([-2.5, -2.5])
    rhat = torch.tensor([[0.0, 0.1, 0.3], [0.0, -0.2, 0.1]])
    beta, alpha = 0.5, 0.25
    out = dpo_treg_loss(logp, mask, ref_seq, rhat, beta, alpha)
    rw, rl = 0.5 * (-2.0 + 2.5), 0.5 * (-3.0 + 2.5)  # 0.25, -0.25
    dpo = math.log(1 + math.exp(-(rw - rl)))
    reg_w = -(0.5 * 0.1 * -1.0 + 0.5 * 0.3 * -1.0)  # 0.2
    reg_l = -(0.5 * -0.2 * -2.0 + 0.5 * 0.1 * -1.0)  # -0.15
    w = 1 / (1 + math.exp(-(rl - rw)))  # sigma(-0.5) = 0.3775
    assert out["weight"].item() == pytest.approx(w, abs=1e-6)
    assert out["reg"].item() == pytest.approx(reg_w + reg_l, abs=1e-6)
    assert out["loss"].item() == pytest.approx(dpo + alpha * w * (reg_w + reg_l), abs=1e-6)


def test_alpha_zero_is_exactly_dpo():
    logp, mask, ref_seq, rhat = _pairs()
    cfg_dpo = OmegaConf.create({"beta": 0.1})
    cfg_treg = OmegaConf.create({"beta": 0.1, "alpha": 0.0})
    a = dpo_pair_loss(logp, mask, ref_seq, rhat, cfg_dpo)["loss"]
    b = treg_pair_loss(logp, mask, ref_seq, rhat, cfg_treg)["loss"]
    assert torch.equal(a, b)  # bitwise
    (ga,) = torch.autograd.grad(a.mean(), logp)
    (gb,) = torch.autograd.grad(b.mean(), logp)
    assert torch.equal(ga, gb)
    c = treg_pair_loss(logp, mask, ref_seq, rhat, OmegaConf.create({"beta": 0.1, "alpha": 0.5}))["loss"]
    assert not torch.allclose(a, c)


def test_treg_gradient_is_dpo_plus_weighted_token_term_with_w_detached():
    beta, alpha = 0.2, 0.5
    logp, mask, ref_seq, rhat = _pairs(p=2, seed=3)
    out = dpo_treg_loss(logp, mask, ref_seq, rhat, beta, alpha)
    (g_all,) = torch.autograd.grad(out["loss"].sum(), logp)
    (g_dpo,) = torch.autograd.grad(dpo_treg_loss(logp, mask, ref_seq, rhat, beta, 0.0)["loss"].sum(), logp)
    w = out["weight"].detach()
    # w does not carry gradient: the extra gradient is exactly alpha * w_pair * (-beta * r_hat_t) on response tokens
    w_rows = torch.cat([w, w]).unsqueeze(1)
    assert torch.allclose(g_all - g_dpo, alpha * w_rows * (-beta * rhat) * mask, atol=1e-6)
    # sign: a token with r_hat > 0 gets a negative gradient (descent raises its log-prob), r_hat < 0 the opposite
    extra = g_all - g_dpo
    on = mask.bool()
    assert (torch.sign(extra[on]) == -torch.sign(rhat[on])).all()


def test_tokens_outside_the_mask_do_not_matter():
    logp, mask, ref_seq, rhat = _pairs(seed=5)
    cfg = OmegaConf.create({"beta": 0.1, "alpha": 0.25})
    noisy = logp.detach().clone()
    noisy[mask == 0] = -50.0
    a = treg_pair_loss(logp.detach(), mask, ref_seq, rhat, cfg)["loss"]
    b = treg_pair_loss(noisy, mask, ref_seq, rhat, cfg)["loss"]
    assert torch.allclose(a, b)
