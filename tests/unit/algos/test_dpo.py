import math

import pytest
import torch

from calmrl.algos import ALGOS
from calmrl.algos.dpo import (
    dpo_loss,
    implicit_q_rewards,
    sequence_logprobs,
)


def test_dpo_loss_hand_computed():
    # r_w = 0.5 * (-1 - -1.5) = 0.25, r_l = 0.5 * (-2 - -1.5) = -0.25, margin 0.5 -> -log sigma(0.5) = log(1 + e^-0.5)
    loss, rw, rl = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5]), 0.5)
    assert rw.item() == pytest.approx(0.25) and rl.item() == pytest.approx(-0.25)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)  # 0.474077


def test_dpo_loss_is_log2_at_the_reference_and_finite_for_huge_margins():
    zero = torch.zeros(3)
    loss, *_ = dpo_loss(zero, zero, zero, zero, 0.1)
    assert torch.allclose(loss, torch.full((3,), math.log(2.0)))
    loss, *_ = dpo_loss(torch.tensor([-1e4]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    assert torch.isfinite(loss).all() and loss.item() == pytest.approx(1e4)  # softplus(1e4), not inf


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    beta = 0.3
    pc = torch.tensor([-3.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, rw, rl = dpo_loss(pc, pr, torch.tensor([-2.5]), torch.tensor([-2.5]), beta)
    loss.sum().backward()
    # dL/d logpi(y_w) = -beta * sigma(-(r_w - r_l)), dL/d logpi(y_l) = +beta * sigma(-(r_w - r_l))
    s = torch.sigmoid(-(rw - rl)).detach()
    assert pc.grad.item() == pytest.approx(-beta * s.item(), abs=1e-6) and pc.grad.item() < 0
    assert pr.grad.item() == pytest.approx(beta * s.item(), abs=1e-6) and pr.grad.item() > 0


def test_implicit_q_rewards_sum_to_the_sequence_reward_and_respect_the_mask():
    g = torch.Generator().manual_seed(0)
    lp, ref = -torch.rand(4, 7, generator=g) * 3, -torch.rand(4, 7, generator=g) * 3
    mask = torch.zeros(4, 7)
    mask[0, 2:5] = 1
    mask[1, 3:7] = 1
    mask[2, 1:2] = 1
    mask[3, 4:6] = 1
    r = implicit_q_rewards(lp, ref, mask, beta=0.2)
    expected = 0.2 * (sequence_logprobs(lp, mask) - sequence_logprobs(ref, mask))
    assert torch.allclose(r.sum(1), expected, atol=1e-6)
    assert torch.equal(r[mask == 0], torch.zeros(int((mask == 0).sum())))
    # hand value: one token, beta 0.5, log pi = -1, log pi_ref = -3 -> +1.0 (pi likes it more than pi_ref)
    one = implicit_q_rewards(torch.tensor([[0.0, -1.0]]), torch.tensor([[0.0, -3.0]]), torch.tensor([[0.0, 1.0]]), 0.5)
    assert one.tolist() == [[0.0, 1.0]]


def test_registered_as_offline_preference_algos():
    for name, needs in (("dpo", False), ("dpo_treg", True)):
        fn = ALGOS.get(name)
        assert fn.offline and fn.needs_token_rewards is needs
        with pytest.raises(ValueError, match="offline on preference pairs"):
            fn(None, None)
