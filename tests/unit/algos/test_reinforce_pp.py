import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.reinforce_pp import reinforce_pp_advantages, reinforce_pp_token_rewards
from calmrl.data import build_batch


def reference_reinforce_pp(outcome, logprobs, ref_logprobs, mask, kl_beta, gamma, eps):
    """Plain-loop REINFORCE++, written independently of the vectorized code (lists in, tensor out)."""
    n, width = len(mask), len(mask[0])
    returns = [[0.0] * width for _ in range(n)]
    valid = []
    for i in range(n):
        cols = [t for t in range(width) if mask[i][t] == 1]
        rewards = {t: -kl_beta * (logprobs[i][t] - ref_logprobs[i][t]) for t in cols}
        if cols:
            rewards[cols[-1]] += outcome[i]
        acc = 0.0
        for t in reversed(cols):
            acc = rewards[t] + gamma * acc
            returns[i][t] = acc
            valid.append(acc)
    mean = sum(valid) / len(valid)
    std = (sum((x - mean) ** 2 for x in valid) / (len(valid) - 1)) ** 0.5
    out = [[(returns[i][t] - mean) / (std + eps) if mask[i][t] == 1 else 0.0 for t in range(width)] for i in range(n)]
    return torch.tensor(out)


def test_hand_computed_one_row_returns():
    # prompt of 1 token, response of 3 tokens, 1 padding; kl_beta = 0 -> reward = outcome at the last token
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.0]])
    lp = torch.tensor([[0.0, -1.0, -2.0, -0.5, 0.0]])
    rewards = reinforce_pp_token_rewards(torch.tensor([2.0]), lp, lp - 0.3, mask, kl_beta=0.0)
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 2.0, 0.0]]
    # gamma = 1: every response token's return is the outcome -> whitening of a constant gives 0
    assert torch.equal(reinforce_pp_advantages(rewards, mask, gamma=1.0), torch.zeros_like(mask))
    # gamma = 0.5: returns (0.5, 1, 2), mean 7/6, unbiased std sqrt(7/12)
    adv = reinforce_pp_advantages(rewards, mask, gamma=0.5, eps=0.0)
    returns = torch.tensor([0.5, 1.0, 2.0])
    expected = (returns - 7 / 6) / (7 / 12) ** 0.5
    assert torch.allclose(adv[0, 1:4], expected, atol=1e-6)
    assert adv[0, 0] == 0 and adv[0, 4] == 0


def test_reverse_cumsum_with_kl_rewards_before_whitening():
    # returns before whitening are recoverable: adv * std + mean, check against the hand reverse cumsum
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    rewards = torch.tensor([[1.0, -2.0, 4.0]])
    # gamma = 0.5: G = (1 - 1 + 1, -2 + 2, 4) = (1, 0, 4)
    adv = reinforce_pp_advantages(rewards, mask, gamma=0.5, eps=0.0)
    g = torch.tensor([1.0, 0.0, 4.0])
    assert torch.allclose(adv[0], (g - g.mean()) / g.std(), atol=1e-6)
    # gamma = 1: G = (3, 2, 4)
    adv = reinforce_pp_advantages(rewards, mask, gamma=1.0, eps=0.0)
    g = torch.tensor([3.0, 2.0, 4.0])
    assert torch.allclose(adv[0], (g - g.mean()) / g.std(), atol=1e-6)


def test_kl_sign():
    # a token more likely under the policy than under the reference is penalised, a less likely one rewarded
    mask = torch.tensor([[1.0, 1.0, 1.0]])
    lp = torch.tensor([[-0.5, -2.0, -1.0]])
    ref = torch.tensor([[-1.0, -1.0, -1.0]])
    r = reinforce_pp_token_rewards(torch.tensor([0.0]), lp, ref, mask, kl_beta=0.1)
    assert torch.allclose(r, torch.tensor([[-0.05, 0.1, 0.0]]))


def test_outcome_only_at_last_response_token_with_padding():
    # rows: prompt 2 + response 3; prompt 1 + response 1 + padding 3; prompt 3 + response 2; no response
    mask = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0, 1.0],
            [0.0, 1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0, 1.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    zeros = torch.zeros_like(mask)
    r = reinforce_pp_token_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), zeros, zeros, mask, kl_beta=0.5)
    expected = torch.zeros_like(mask)
    expected[0, 4], expected[1, 1], expected[2, 4] = 1.0, 2.0, 3.0
    assert torch.equal(r, expected)
    # KL terms never leak outside the mask
    lp = torch.randn(mask.shape)
    r = reinforce_pp_token_rewards(torch.zeros(4), lp, torch.zeros_like(lp), mask, kl_beta=0.5)
    assert torch.all(r[mask == 0] == 0)


def test_batch_whitening_mean_zero_std_one():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 2, 7, 1, 4])
    mask = (torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rewards = torch.randn(5, 8, generator=g)
    for gamma in (1.0, 0.9):
        adv = reinforce_pp_advantages(rewards, mask, gamma=gamma, eps=0.0)
        valid = adv[mask == 1]
        assert abs(valid.mean().item()) < 1e-5
        assert abs(valid.std().item() - 1.0) < 1e-5  # unbiased std over the valid tokens
        assert torch.all(adv[mask == 0] == 0)


@pytest.mark.parametrize("gamma", [1.0, 0.7])
def test_matches_loop_reference(gamma):
    g = torch.Generator().manual_seed(1)
    n, width = 6, 10
    prompt = torch.randint(0, 4, (n,), generator=g)
    resp = torch.randint(1, 6, (n,), generator=g)
    pos = torch.arange(width).unsqueeze(0)
    mask = ((pos >= prompt.unsqueeze(1)) & (pos < (prompt + resp).unsqueeze(1))).float()
    lp = torch.randn(n, width, generator=g) * mask
    ref = torch.randn(n, width, generator=g) * mask
    outcome = torch.randn(n, generator=g)
    rewards = reinforce_pp_token_rewards(outcome, lp, ref, mask, kl_beta=0.05)
    adv = reinforce_pp_advantages(rewards, mask, gamma=gamma, eps=1e-6)
    expected = reference_reinforce_pp(
        outcome.tolist(), lp.tolist(), ref.tolist(), mask.tolist(), kl_beta=0.05, gamma=gamma, eps=1e-6
    )
    assert torch.allclose(adv, expected, atol=1e-5)


def _cfg(**kw):
    return OmegaConf.create({"kl_beta": 0.01, "gamma": 1.0, "eps": 1e-6, **kw})


def test_registered_kl_zero_and_equal_outcomes_give_zero(make_trajectory):
    trajs = [
        make_trajectory(0, [0.5, 0.5], response_len=3),
        make_trajectory(1, [1.0], response_len=2),
        make_trajectory(0, [0.0, 1.0]),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    batch.ref_logprobs = batch.old_logprobs + torch.randn(batch.old_logprobs.shape) * batch.response_mask
    adv = ALGOS.get("reinforce_pp")(batch, _cfg(kl_beta=0.0))
    assert adv.shape == batch.input_ids.shape
    assert torch.allclose(adv, torch.zeros_like(adv), atol=1e-6)


def test_registered_uses_episode_return_for_every_step_and_token_rewards(make_trajectory):
    # two 2-step trajectories (returns 1 and 0), one response token per step, no KL:
    # every step of a trajectory gets its trajectory's outcome -> returns (1, 1, 0, 0) -> whitened +-0.866
    trajs = [make_trajectory(0, [0.0, 1.0]), make_trajectory(0, [0.0, 0.0])]
    batch = build_batch(trajs, pad_token_id=0)
    batch.ref_logprobs = batch.old_logprobs.clone()
    adv = ALGOS.get("reinforce_pp")(batch, _cfg(eps=0.0))
    per_row = adv.sum(1)
    assert torch.allclose(per_row, torch.tensor([1.0, 1.0, -1.0, -1.0]) * 3**0.5 / 2, atol=1e-6)
    assert torch.all(adv[batch.response_mask == 0] == 0)
    # shaper token rewards are added to the token rewards (outside the mask they are ignored)
    batch.token_rewards = torch.zeros_like(batch.response_mask)
    batch.token_rewards[2, 2] = 1.0  # makes row 2's return equal to the first trajectory's
    batch.token_rewards[3, 0] = 5.0  # a prompt token: ignored
    adv = ALGOS.get("reinforce_pp")(batch, _cfg(eps=0.0))
    assert torch.allclose(adv.sum(1), torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=1e-6)


def test_registered_invalid_row_loses_its_own_penalty_only(make_trajectory):
    # one 3-step trajectory (return 1) with an invalid middle step, one 1-step failure; no KL, one token a step.
    # penalty_rule=row: outcomes (1, 0.9, 1, 0); folded: the return is 0.9 for all three rows -> (0.9, 0.9, 0.9, 0).
    from calmrl.data import apply_penalty_rule

    trajs = [make_trajectory(0, [0.0, 0.0, 1.0], invalid=(1,)), make_trajectory(0, [0.0])]
    for rule, outcome in (("row", [1.0, 0.9, 1.0, 0.0]), ("folded", [0.9, 0.9, 0.9, 0.0])):
        batch = apply_penalty_rule(build_batch(trajs, pad_token_id=0), rule)
        batch.ref_logprobs = batch.old_logprobs.clone()
        adv = ALGOS.get("reinforce_pp")(batch, _cfg(eps=0.0))
        expected = reinforce_pp_advantages(
            torch.tensor(outcome)[:, None] * batch.response_mask, batch.response_mask, eps=0.0
        )
        assert torch.allclose(adv, expected, atol=1e-6), rule


def test_registered_kl_in_reward(make_trajectory):
    # one trajectory, one step, response of 2 tokens: logprob - ref = (0.5, 0), beta = 1, outcome 0
    # rewards (-0.5, 0) -> returns (-0.5, 0) -> whitened (-0.7071, 0.7071)
    batch = build_batch([make_trajectory(0, [0.0], response_len=2)], pad_token_id=0)
    batch.ref_logprobs = batch.old_logprobs.clone()
    batch.ref_logprobs[0, 2] -= 0.5
    adv = ALGOS.get("reinforce_pp")(batch, _cfg(kl_beta=1.0, eps=0.0))
    assert torch.allclose(adv[0], torch.tensor([0.0, 0.0, -0.70710678, 0.70710678]), atol=1e-6)


def test_requires_ref_logprobs_and_missing_raises(make_trajectory):
    fn = ALGOS.get("reinforce_pp")
    assert "ref_logprobs" in fn.requires
    batch = build_batch([make_trajectory(0, [1.0]), make_trajectory(0, [0.0])], pad_token_id=0)
    with pytest.raises(ValueError, match="reinforce_pp needs reference log-probs"):
        fn(batch, _cfg())
