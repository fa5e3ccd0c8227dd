import itertools

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.grpo import grpo_advantages
from calmrl.data import build_batch


def reference_grpo(returns, uid, norm="std", eps=1e-6):
    """Plain-loop GRPO, written independently of the vectorized code."""
    out = []
    for r, u in zip(returns, uid, strict=True):
        members = [x for x, v in zip(returns, uid, strict=True) if v == u]
        if len(members) == 1:
            out.append(0.0)
            continue
        mean = sum(members) / len(members)
        std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
        out.append((r - mean) / (std + eps) if norm == "std" else r - mean)
    return torch.tensor(out)


def test_hand_computed_group_of_two():
    # R = (1, 0): mean 0.5, unbiased std sqrt(0.5) -> A = +-0.5/sqrt(0.5) = +-0.7071
    adv = grpo_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), eps=0.0)
    assert torch.allclose(adv, torch.tensor([0.70710678, -0.70710678]))


@pytest.mark.parametrize("norm", ["std", "mean"])
def test_matches_loop_reference_and_sums_to_zero(norm):
    g = torch.Generator().manual_seed(0)
    returns = torch.randn(40, generator=g)
    uid = torch.randint(0, 7, (40,), generator=g)
    adv = grpo_advantages(returns, uid, norm=norm)
    assert torch.allclose(adv, reference_grpo(returns.tolist(), uid.tolist(), norm), atol=1e-5)
    for u in uid.unique():
        assert abs(adv[uid == u].sum().item()) < 1e-4  # invariant: advantages sum to 0 in each group


def test_sign_follows_return_and_group_of_one_is_zero():
    adv = grpo_advantages(torch.tensor([2.0, 1.0, 0.0, 5.0]), torch.tensor([0, 0, 0, 1]))
    assert adv[0] > 0 > adv[2] and adv[1].abs() < 1e-6
    assert adv[3] == 0


def test_equal_returns_give_zero():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0]), torch.tensor([4, 4, 4]))
    assert torch.equal(adv, torch.zeros(3))


def test_permutation_equivariant():
    returns = torch.tensor([0.3, 1.2, -0.4, 2.0, 0.0, 0.5])
    uid = torch.tensor([0, 1, 0, 1, 0, 1])
    perm = torch.tensor([5, 2, 0, 4, 1, 3])
    assert torch.allclose(grpo_advantages(returns, uid)[perm], grpo_advantages(returns[perm], uid[perm]))


def test_registered_algo_weights_trajectories_not_steps(make_trajectory):
    # Group 0: a long failing trajectory (3 steps, return 0) and a short success (1 step, return 1).
    # Trajectory-level GRPO gives +-0.7071 regardless of lengths; step-row statistics would not.
    trajs = [
        make_trajectory(0, [0.0, 0.0, 0.0]),
        make_trajectory(0, [1.0]),
        make_trajectory(1, [0.5, 0.5]),
        make_trajectory(1, [0.0, 0.0]),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    cfg = OmegaConf.create({"norm_adv": "std", "eps": 0.0})
    adv = ALGOS.get("grpo")(batch, cfg)
    assert adv.shape == batch.input_ids.shape
    per_row = adv.sum(1) / batch.response_mask.sum(1)
    expected = [-0.70710678] * 3 + [0.70710678] + [0.70710678] * 2 + [-0.70710678] * 2
    assert torch.allclose(per_row, torch.tensor(expected), atol=1e-6)
    assert torch.all(adv[batch.response_mask == 0] == 0)  # prompt and padding carry no credit


def test_every_response_token_of_a_step_carries_the_advantage(make_trajectory):
    trajs = [make_trajectory(0, [1.0], response_len=3), make_trajectory(0, [0.0], response_len=2)]
    batch = build_batch(trajs, pad_token_id=0)
    adv = ALGOS.get("grpo")(batch, OmegaConf.create({"norm_adv": "mean", "eps": 1e-6}))
    assert adv[0].tolist() == [0.0, 0.0, 0.5, 0.5, 0.5]
    assert adv[1].tolist() == [0.0, 0.0, -0.5, -0.5, 0.0]


def test_large_batch_groups_sum_to_zero():
    # 64k rows, groups of 8, in one vectorized call.
    n = 65536
    uid = torch.arange(n) // 8
    adv = grpo_advantages(torch.rand(n), uid)
    assert adv.shape == (n,)
    assert all(abs(adv[uid == u].sum().item()) < 1e-3 for u in itertools.islice(uid.unique(), 5))
