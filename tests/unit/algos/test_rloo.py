import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.rloo import rloo_advantages
from calmrl.data import apply_penalty_rule, build_batch
from calmrl.schemas.algo import RLOOConfig

VERL_AGENT = {"episode_stats": "step_rows", "singleton": "raw", "penalty_rule": "row"}


def rloo_cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(RLOOConfig), {"name": "rloo", **overrides})


def verl_agent_rloo(episode_return, invalid, uid, penalty=0.1):
    """verl-agent's `compute_rloo_outcome_advantage` (verl/trainer/ppo/core_algos.py of xlan156/verl-agent) after
    `apply_invalid_action_penalty`, in our own words: each step row scores its episode's env return less its own
    penalty; every row of a uid is a member; with n > 1 members, A = s * n/(n-1) - mean * n/(n-1); a lone member
    keeps its score."""
    score = [r - penalty * bad for r, bad in zip(episode_return, invalid, strict=True)]
    out = []
    for i, u in enumerate(uid):
        members = [score[j] for j, v in enumerate(uid) if v == u]
        n = len(members)
        out.append(score[i] * n / (n - 1) - sum(members) / n * n / (n - 1) if n > 1 else score[i])
    return torch.tensor(out)


def reference_rloo(returns, uid):
    """Plain-loop RLOO, written independently of the vectorized code."""
    out = []
    for i, (r, u) in enumerate(zip(returns, uid, strict=True)):
        others = [x for j, (x, v) in enumerate(zip(returns, uid, strict=True)) if v == u and j != i]
        out.append(r - sum(others) / len(others) if others else 0.0)
    return torch.tensor(out)


def test_hand_computed_group_of_two():
    # baseline of each member is the other's return: A = +-(R1 - R2)
    adv = rloo_advantages(torch.tensor([3.0, 1.0]), torch.tensor([7, 7]))
    assert torch.allclose(adv, torch.tensor([2.0, -2.0]))


def test_hand_computed_group_of_three():
    # R = (1, 2, 6): A_0 = 1 - 4 = -3, A_1 = 2 - 3.5 = -1.5, A_2 = 6 - 1.5 = 4.5  (= 3/2 * (R - 3))
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([0, 0, 0]))
    assert torch.allclose(adv, torch.tensor([-3.0, -1.5, 4.5]))


def test_group_of_one_is_zero():
    adv = rloo_advantages(torch.tensor([5.0, 1.0, 0.0]), torch.tensor([2, 0, 0]))
    assert adv[0] == 0
    assert torch.allclose(adv[1:], torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference_and_sums_to_zero(seed):
    g = torch.Generator().manual_seed(seed)
    returns = torch.randn(50, generator=g)
    uid = torch.randint(0, 9, (50,), generator=g) * 13 - 20  # arbitrary (negative, sparse) group ids
    adv = rloo_advantages(returns, uid)
    assert torch.allclose(adv, reference_rloo(returns.tolist(), uid.tolist()), atol=1e-5)
    for u in uid.unique():
        assert abs(adv[uid == u].sum().item()) < 1e-4  # invariant: advantages sum to 0 in each group


def test_equals_scaled_mean_centering():
    returns = torch.tensor([0.2, 0.9, -0.4, 1.5])
    adv = rloo_advantages(returns, torch.zeros(4, dtype=torch.long))
    assert torch.allclose(adv, 4 / 3 * (returns - returns.mean()))


def test_permutation_equivariant():
    returns = torch.tensor([0.3, 1.2, -0.4, 2.0, 0.0, 0.5, 9.0])
    uid = torch.tensor([0, 1, 0, 1, 0, 1, 2])
    perm = torch.tensor([5, 2, 6, 0, 4, 1, 3])
    assert torch.allclose(rloo_advantages(returns, uid)[perm], rloo_advantages(returns[perm], uid[perm]))


def test_empty():
    assert rloo_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long)).shape == (0,)


def test_registered_algo_weights_trajectories_not_steps(make_trajectory):
    # Group 0: a long failing trajectory (3 steps, return 0) and a short success (1 step, return 1):
    # trajectory-level RLOO gives +-1 regardless of lengths (step rows would give 1 - 0 = 1 and 0 - 1/3).
    # Group 1: returns 1, 0, 2 -> A = 1 - 1 = 0, 0 - 1.5 = -1.5, 2 - 0.5 = 1.5.
    trajs = [
        make_trajectory(0, [0.0, 0.0, 0.0]),
        make_trajectory(0, [1.0]),
        make_trajectory(1, [0.5, 0.5]),
        make_trajectory(1, [0.0, 0.0]),
        make_trajectory(1, [2.0], response_len=3),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    adv = ALGOS.get("rloo")(batch, rloo_cfg())  # the defaults: the paper's per-trajectory form
    assert adv.shape == batch.input_ids.shape
    per_row = adv.sum(1) / batch.response_mask.sum(1)
    expected = [-1.0] * 3 + [1.0] + [0.0] * 2 + [-1.5] * 2 + [1.5]
    assert torch.allclose(per_row, torch.tensor(expected), atol=1e-6)
    assert torch.all(adv[batch.response_mask == 0] == 0)  # prompt and padding carry no credit
    assert adv[-1].tolist() == [0.0, 0.0, 1.5, 1.5, 1.5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_verl_agent_form_matches_verl_agent_with_invalid_actions(make_trajectory, random_agent_trajectories, seed):
    trajs = random_agent_trajectories(seed, n=13, p_reward=0.25)
    trajs.append(make_trajectory(8, [0.0, 1.0], invalid=(0,)))  # a group of one trajectory
    batch = apply_penalty_rule(build_batch(trajs, pad_token_id=0), "row")
    adv = ALGOS.get("rloo")(batch, rloo_cfg(**VERL_AGENT))
    expected = verl_agent_rloo(batch.episode_return.tolist(), batch.invalid.tolist(), batch.uid.tolist())
    assert torch.allclose(adv.sum(1) / batch.response_mask.sum(1), expected, atol=1e-5)


def test_invalid_middle_action_lowers_only_its_own_row(make_trajectory):
    # A: 3 steps, return 1, middle action invalid -> scores (1, 0.9, 1); B: 1 step, return 0. Step-row members
    # (1, 0.9, 1, 0), n = 4: A = s - (sum - s) / 3 -> (1 - 1.9/3, 0.9 - 2/3, 1 - 1.9/3, 0 - 2.9/3).
    trajs = [make_trajectory(0, [0.0, 0.0, 1.0], invalid=(1,)), make_trajectory(0, [0.0])]
    batch = apply_penalty_rule(build_batch(trajs, pad_token_id=0), "row")
    per_row = ALGOS.get("rloo")(batch, rloo_cfg(**VERL_AGENT)).sum(1) / batch.response_mask.sum(1)
    expected = torch.tensor([1 - 1.9 / 3, 0.9 - 2 / 3, 1 - 1.9 / 3, -2.9 / 3])
    assert torch.allclose(per_row, expected, atol=1e-6)
