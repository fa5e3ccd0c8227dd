import itertools

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.grpo import grpo_advantages
from calmrl.data import apply_penalty_rule, build_batch
from calmrl.schemas.algo import GRPOConfig

PAPER = {"episode_stats": "trajectory", "singleton": "zero", "penalty_rule": "folded"}  # the defaults
VERL_AGENT = {"episode_stats": "step_rows", "singleton": "raw", "penalty_rule": "row"}


def grpo_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(GRPOConfig), {"name": "grpo", **overrides})


def verl_agent_grpo(episode_return, invalid, uid, penalty=0.1, norm_by_std=True, eps=1e-6):
    """verl-agent's `compute_grpo_outcome_advantage` (verl/trainer/ppo/core_algos.py of xlan156/verl-agent) after
    `apply_invalid_action_penalty`, in our own words: each step row scores its episode's env return, an invalid
    row loses `penalty`; every row of a uid is a member (compute_mean_std_cross_steps=True); a lone member has
    mean 0 and std 1; std is torch.std (unbiased)."""
    score = [r - penalty * bad for r, bad in zip(episode_return, invalid, strict=True)]
    out = []
    for i, u in enumerate(uid):
        members = [score[j] for j, v in enumerate(uid) if v == u]
        if len(members) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(members) / len(members)
            std = (sum((x - mean) ** 2 for x in members) / (len(members) - 1)) ** 0.5
        out.append((score[i] - mean) / (std + eps) if norm_by_std else score[i] - mean)
    return torch.tensor(out)


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
    adv = ALGOS.get("grpo")(batch, grpo_cfg(eps=0.0, **PAPER))
    assert adv.shape == batch.input_ids.shape
    per_row = adv.sum(1) / batch.response_mask.sum(1)
    expected = [-0.70710678] * 3 + [0.70710678] + [0.70710678] * 2 + [-0.70710678] * 2
    assert torch.allclose(per_row, torch.tensor(expected), atol=1e-6)
    assert torch.all(adv[batch.response_mask == 0] == 0)  # prompt and padding carry no credit


def test_every_response_token_of_a_step_carries_the_advantage(make_trajectory):
    trajs = [make_trajectory(0, [1.0], response_len=3), make_trajectory(0, [0.0], response_len=2)]
    batch = build_batch(trajs, pad_token_id=0)
    adv = ALGOS.get("grpo")(batch, grpo_cfg(norm_adv="mean"))
    assert adv[0].tolist() == [0.0, 0.0, 0.5, 0.5, 0.5]
    assert adv[1].tolist() == [0.0, 0.0, -0.5, -0.5, 0.0]


def test_verl_agent_form_scores_step_rows_and_penalizes_only_the_invalid_row(make_trajectory):
    # Group 0: A fails in 3 steps with an invalid middle action; B succeeds in one step. Step-row members:
    # A (0, -0.1, 0), B (1): mean 0.225, unbiased std sqrt((0.050625 + 0.105625 + 0.050625 + 0.600625) / 3)
    # = 0.5188127 -> (-0.4336824, -0.6264302, -0.4336824, 1.4937950) at eps = 0.
    # Group 1: one one-step trajectory: a lone member keeps its raw score 0.5.
    trajs = [make_trajectory(0, [0.0, 0.0, 0.0], invalid=(1,)), make_trajectory(0, [1.0]), make_trajectory(1, [0.5])]
    batch = apply_penalty_rule(build_batch(trajs, pad_token_id=0), "row")
    adv = ALGOS.get("grpo")(batch, grpo_cfg(eps=0.0, **VERL_AGENT))
    per_row = adv.sum(1) / batch.response_mask.sum(1)
    assert torch.allclose(per_row, torch.tensor([-0.4336824, -0.6264302, -0.4336824, 1.4937950, 0.5]), atol=1e-6)
    # the paper's form, the penalty folded into the reward: A's return is -0.1 for all three of its rows
    folded = apply_penalty_rule(build_batch(trajs, pad_token_id=0), "folded")
    adv = ALGOS.get("grpo")(folded, grpo_cfg(eps=0.0))  # the defaults
    assert torch.allclose(adv.sum(1) / folded.response_mask.sum(1), torch.tensor([-0.70710678] * 3 + [0.70710678, 0.0]))


@pytest.mark.parametrize("norm", ["std", "mean"])
@pytest.mark.parametrize("seed", [0, 1])
def test_registered_algo_matches_verl_agent(make_trajectory, random_agent_trajectories, seed, norm):
    trajs = random_agent_trajectories(seed)
    trajs.append(make_trajectory(9, [1.0, 0.0]))  # a group of one trajectory
    batch = apply_penalty_rule(build_batch(trajs, pad_token_id=0), "row")
    adv = ALGOS.get("grpo")(batch, grpo_cfg(norm_adv=norm, **VERL_AGENT))
    expected = verl_agent_grpo(
        batch.episode_return.tolist(), batch.invalid.tolist(), batch.uid.tolist(), norm_by_std=norm == "std"
    )
    assert torch.allclose(adv.sum(1) / batch.response_mask.sum(1), expected, atol=1e-5)


def test_large_batch_groups_sum_to_zero():
    # 64k rows, groups of 8, in one vectorized call.
    n = 65536
    uid = torch.arange(n) // 8
    adv = grpo_advantages(torch.rand(n), uid)
    assert adv.shape == (n,)
    assert all(abs(adv[uid == u].sum().item()) < 1e-3 for u in itertools.islice(uid.unique(), 5))
