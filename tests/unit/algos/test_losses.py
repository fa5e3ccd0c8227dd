import math

import pytest
import torch

from calmrl.algos.losses import kl_low_var, masked_mean, ppo_clip_loss, reinforce_loss


def test_masked_mean_ignores_masked_tokens():
    x = torch.tensor([[1.0, 100.0], [3.0, 5.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert masked_mean(x, mask).item() == 3.0


def test_ppo_clip_hand_computed():
    old = torch.zeros(1, 4)
    # ratios e^0.5=1.65, e^-0.5=0.61, e^0.1=1.105, e^0.5 with negative advantage
    logp = torch.tensor([[0.5, -0.5, 0.1, 0.5]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, clip_frac = ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2)
    # token 1: min(1.65, 1.2) = 1.2 -> -1.2 ; token 2: min(-0.61, -0.8) = -0.8 -> +0.8
    # token 3: 1.105 unclipped -> -1.105 ; token 4: min(-1.65, -1.2) = -1.65 -> +1.65
    expected = (-1.2 + 0.8 - math.exp(0.1) + math.exp(0.5)) / 4
    assert abs(loss.item() - expected) < 1e-5
    assert abs(clip_frac.item() - 0.5) < 1e-6


def test_ppo_gradient_sign_raises_logprob_of_positive_advantage():
    logp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = ppo_clip_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
    loss.backward()
    assert logp.grad[0, 0] < 0 < logp.grad[0, 1]  # descent raises token 0, lowers token 1


def test_reinforce_equals_ppo_gradient_on_policy():
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    adv = torch.tensor([[0.3, -0.7, 1.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    g1 = torch.autograd.grad(reinforce_loss(logp, adv, mask), logp)[0]
    g2 = torch.autograd.grad(ppo_clip_loss(logp, logp.detach(), adv, mask)[0], logp)[0]
    assert torch.allclose(g1, g2)
    assert g1[0, 2] == 0


def test_kl_low_var_is_nonnegative_and_zero_at_equality():
    logp = torch.tensor([-1.0, -2.0, -0.1])
    assert torch.allclose(kl_low_var(logp, logp), torch.zeros(3))
    ref = torch.tensor([-1.5, -1.0, -3.0])
    kl = kl_low_var(logp, ref)
    assert torch.all(kl > 0)
    d = ref[0] - logp[0]
    assert torch.isclose(kl[0], torch.exp(d) - d - 1)


def verl_policy_loss(old, logp, adv, mask, clip=0.2, clip_c=3.0):
    """verl's `compute_policy_loss` (verl/trainer/ppo/core_algos.py, as in xlan156/verl-agent), token-mean, in our
    own words: the clipped surrogate, then on negative-advantage tokens also capped at -A * clip_c."""
    ratio = torch.exp(logp - old)
    loss1, loss2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip)
    clipped = torch.maximum(loss1, loss2)
    capped = torch.minimum(-adv * clip_c, clipped)
    per_token = torch.where(adv < 0, capped, clipped)
    return (per_token * mask).sum() / mask.sum()


def test_dual_clip_caps_negative_advantages_only():
    # ratio 5 with A = -1: the clipped surrogate's loss is 5, dual-clip caps it at 3; with A = +1 it is -1.2
    # either way; ratio 0.5 with A = -1: 0.8 (below the cap).
    logp = torch.log(torch.tensor([[5.0, 5.0, 0.5]]))
    old, adv, mask = torch.zeros(1, 3), torch.tensor([[-1.0, 1.0, -1.0]]), torch.ones(1, 3)
    plain, _ = ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2)
    dual, _ = ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2, dual_clip=3.0)
    assert plain.item() == pytest.approx((5.0 - 1.2 + 0.8) / 3)
    assert dual.item() == pytest.approx((3.0 - 1.2 + 0.8) / 3)
    # the cap has no gradient: the capped token stops pushing
    logp.requires_grad_(True)
    grad = torch.autograd.grad(ppo_clip_loss(logp, old, adv, mask, dual_clip=3.0)[0], logp)[0]
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[0, 1] == 0  # clipped (ratio 5 > 1.2), capped, clipped


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dual_clip_matches_verl(seed):
    g = torch.Generator().manual_seed(seed)
    logp, old = torch.randn(6, 9, generator=g), torch.randn(6, 9, generator=g)
    adv = torch.randn(6, 9, generator=g) * 2
    mask = (torch.rand(6, 9, generator=g) < 0.8).float()
    ours, _ = ppo_clip_loss(logp, old, adv, mask, clip_ratio=0.2, dual_clip=3.0)
    assert ours.item() == pytest.approx(verl_policy_loss(old, logp, adv, mask).item(), rel=1e-6)
