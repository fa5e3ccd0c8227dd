import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos import ALGOS
from calmrl.algos.pure import (
    answer_rows,
    pure_advantages,
    pure_token_rewards,
    step_token_counts,
    whiten_advantages,
)
from calmrl.algos.rloo import rloo_advantages
from calmrl.data import Step, Trajectory, build_batch
from calmrl.envs.math import MathEnv
from calmrl.schemas.algo import PUREConfig
from calmrl.shapers.prm_minform import minform_rewards, place_step_rewards

CONF = Path(__file__).parents[3] / "conf"


def cfg(**kw):
    base = {"verifiable_coef": 1.0, "reward_baseline": "token", "mask_step_end": True, "whiten_advantages": True}
    return OmegaConf.create(base | kw)


def two_responses():
    # row 0: 4 response tokens, steps end at t=1 (w r = 0.2) and t=3 (-0.5); solved
    # row 1: 2 response tokens, one step ending at t=1 (0.6); not solved
    p = torch.tensor([[0.0, 0.2, 0.0, -0.5], [0.0, 0.6, 0.0, 0.0]])
    ends = torch.tensor([[0, 1, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    return p, ends, mask, torch.tensor([1.0, 0.0]), torch.tensor([0, 0])


def test_step_token_counts():
    p, ends, mask, *_ = two_responses()
    assert torch.equal(step_token_counts(ends, mask), torch.tensor([[0.0, 2, 0, 2], [0, 2, 0, 0]]))
    # a step end on padding is ignored; counts restart after every end
    ends2 = torch.tensor([[1, 0, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(step_token_counts(ends2, torch.ones(1, 5)), torch.tensor([[1.0, 0, 0, 3, 0]]))


def test_hand_computed_token_baseline():
    p, ends, mask, solved, uid = two_responses()
    r, has = pure_token_rewards(p, ends, mask, solved, uid, verifiable_coef=1.0, baseline="token")
    # b_0 = PR_1 / len_1 = 0.6 / 2 = 0.3 per token (2 tokens per step); b_1 = PR_0 / len_0 = -0.3 / 4 = -0.075
    # verifiable: v = (1 - 0, 0 - 1) = (+1, -1) at the last token
    assert torch.allclose(r, torch.tensor([[0.0, 0.2 - 0.6, 0.0, -0.5 - 0.6 + 1.0], [0.0, 0.6 + 0.15 - 1.0, 0, 0]]))
    assert has.all()
    adv = pure_advantages(r, mask)
    assert torch.allclose(adv, torch.tensor([[-0.5, -0.5, -0.1, -0.1], [-0.25, -0.25, 0, 0]]))
    masked = pure_advantages(r, mask, ends)  # the step-end tokens carry no advantage (the reference's default)
    assert torch.allclose(masked, torch.tensor([[-0.5, 0.0, -0.1, 0.0], [-0.25, 0.0, 0, 0]]))


def test_hand_computed_step_baseline():
    p, ends, mask, solved, uid = two_responses()
    r, _ = pure_token_rewards(p, ends, mask, solved, uid, verifiable_coef=0.0, baseline="step")
    # per-step means: row 0: -0.3 / 2 = -0.15, row 1: 0.6; b_0 = 0.6, b_1 = -0.15, once per step end
    assert torch.allclose(r, torch.tensor([[0.0, 0.2 - 0.6, 0.0, -0.5 - 0.6], [0.0, 0.6 + 0.15, 0, 0]]))


def test_token_baseline_matches_a_loop_over_the_group():
    g = torch.Generator().manual_seed(0)
    n, length = 7, 9
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length) < lengths.unsqueeze(1)).float()
    ends = (torch.rand(n, length, generator=g) < 0.3) & (mask > 0)
    ends[torch.arange(n), lengths - 1] = True  # the last step ends at the last token
    p = torch.randn(n, length, generator=g) * ends
    uid = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    outcome = torch.randint(0, 2, (n,), generator=g).float()
    r, _ = pure_token_rewards(p, ends, mask, outcome, uid, verifiable_coef=0.5, baseline="token")
    for i in range(n):
        others = [j for j in range(n) if uid[j] == uid[i] and j != i]
        b = sum(p[j].sum() for j in others) / sum(lengths[j] for j in others)
        v = 0.5 * (outcome[i] - sum(outcome[j] for j in others) / len(others))
        expected = p[i].clone()
        prev = -1
        for t in range(int(lengths[i])):
            if ends[i, t]:
                expected[t] -= b * (t - prev)
                prev = t
        expected[lengths[i] - 1] += v
        assert torch.allclose(r[i], expected, atol=1e-5)
        # token baseline: the row's total is PR_i - b_i len_i + v_i
        assert torch.allclose(r[i].sum(), p[i].sum() - b * lengths[i] + v, atol=1e-5)


def test_without_process_rewards_pure_is_rloo_on_the_outcome():
    outcome = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    uid = torch.tensor([0, 0, 0, 1, 1])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 1]])
    last = torch.zeros_like(mask, dtype=torch.bool)
    last[[0, 1, 2, 3, 4], [2, 1, 0, 2, 2]] = True
    r, _ = pure_token_rewards(torch.zeros_like(mask), last, mask, outcome, uid, verifiable_coef=1.0)
    adv = pure_advantages(r, mask)
    assert torch.allclose(adv, rloo_advantages(outcome, uid).unsqueeze(1) * mask)


def test_verifiable_shift_cancels_in_the_rloo_baseline():
    p, ends, mask, solved, uid = two_responses()
    a, _ = pure_token_rewards(p, ends, mask, solved, uid)
    b, _ = pure_token_rewards(p, ends, mask, solved - 1.0, uid)  # the reference's solved - 1
    assert torch.allclose(a, b)


def test_group_of_one_gets_zero():
    p, ends, mask, solved, _ = two_responses()
    r, has = pure_token_rewards(p, ends, mask, solved, torch.tensor([0, 1]))
    assert not has.any() and torch.all(r == 0)


@pytest.mark.parametrize("temperature,limit", [(1e-4, "min"), (float("inf"), "mean")])
def test_temperature_limits_through_the_algo(temperature, limit):
    # row 0's steps r = (0.5, -0.4, 0.9) on its tokens 1, 3, 4; row 1 has no process reward and no steps scored
    # (its PR is 0, so row 0's baseline is 0). With verifiable_coef = 0 the advantage at row 0's first token is
    # sum_i w_i r_i: min r (T -> 0) or mean r (T -> inf).
    trajs = [
        Trajectory(0, 0, "", [Step([1, 1], [2] * 5, [-0.1] * 5, "x", "x", 0.0, "a")]),
        Trajectory(0, 0, "", [Step([1, 1], [2] * 5, [-0.1] * 5, "x", "x", 0.0, "a")]),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    r = torch.tensor([[0.5, -0.4, 0.9], [0.0, 0.0, 0.0]])
    step_mask = torch.tensor([[True, True, True], [False, False, False]])
    shaped = minform_rewards(r, step_mask, temperature)
    batch = place_step_rewards(batch, shaped, step_mask, torch.tensor([[1, 3, 4], [0, 0, 0]]))
    adv = ALGOS.get("pure")(batch, cfg(verifiable_coef=0.0, mask_step_end=False, whiten_advantages=False))
    first = adv[0, 2]  # prompt of 2 tokens, then the response
    expected = -0.4 if limit == "min" else (0.5 - 0.4 + 0.9) / 3
    assert torch.allclose(first, torch.tensor(expected), atol=1e-4)
    if limit == "min":  # after the worst step (token 3) the min-form return is 0
        assert torch.allclose(adv[0, 2 + 4], torch.tensor(0.0), atol=1e-4)
    assert torch.all(adv[batch.response_mask == 0] == 0)


def two_row_batch():
    """The two responses of `two_responses` as a batch (prompts of 3 and 1 tokens), process rewards placed."""
    trajs = [
        Trajectory(0, 0, "", [Step([1, 1, 1], [2] * 4, [-0.1] * 4, "x", "x", 1.0, "a")]),
        Trajectory(0, 0, "", [Step([1], [2] * 2, [-0.1] * 2, "x", "x", 0.0, "a")]),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    return place_step_rewards(
        batch,
        torch.tensor([[0.2, -0.5], [0.6, 0.0]]),
        torch.tensor([[True, True], [True, False]]),
        torch.tensor([[1, 3], [1, 0]]),
    )


def test_registered_fn_zero_outside_the_response_and_on_step_ends():
    batch = two_row_batch()
    _, ends, *_ = two_responses()
    assert torch.equal(batch.token_reward_mask[0, 3:], ends[0])
    adv = ALGOS.get("pure")(batch, cfg(whiten_advantages=False))
    assert torch.allclose(adv[0, 3:], torch.tensor([-0.5, 0.0, -0.1, 0.0]))
    assert torch.allclose(adv[1, 1:3], torch.tensor([-0.25, 0.0]))
    assert torch.all(adv[batch.response_mask == 0] == 0)
    assert ALGOS.get("pure").reads_token_rewards


# ---------------------------------------------------------------- whitening (the reference trainer's default)
def reference_whitening(rows: list[torch.Tensor], mask_separators: bool = True) -> list[torch.Tensor]:
    """CJReinforce/PURE's `NaiveReplayBuffer.normalize` (openrlhf/trainer/ppo_utils/replay_buffer.py), retold.

    The replay buffer holds one 1-D advantage vector per response, padding already cut off. The separator tokens
    are recognised as the entries that are exactly 0. Their number is taken off the token count; the mean is the
    sum of every entry over that count; the variance sums (a - mean)^2 over every entry, zeros included, over the
    same count, and is kept >= 1e-8; every entry is shifted and scaled, then the zeros are put back to 0.
    Without separator masking nothing is taken off the count and nothing is put back.
    """
    flat = torch.cat(rows).double()
    count = flat.numel() - (int((flat == 0).sum()) if mask_separators else 0)
    mean = float(flat.sum()) / count
    var = float(((flat - mean) ** 2).sum()) / count
    scale = 1.0 / math.sqrt(max(var, 1e-8))
    out = []
    for adv in rows:
        moved = (adv.double() - mean) * scale
        out.append(moved.masked_fill(adv == 0, 0.0) if mask_separators else moved)
    return out


def test_hand_computed_whitening():
    # response tokens (3, 0, 1) and (-1, 0); the last column of row 1 is padding
    adv = torch.tensor([[3.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    # zeros kept: M = {3, 1, -1}, mean = 3 / 3 = 1; var = ((3-1)^2 + (1-1)^2 + (-1-1)^2 + 2 * (0-1)^2) / 3 = 10 / 3
    s = math.sqrt(10 / 3)
    assert torch.allclose(whiten_advantages(adv, mask), torch.tensor([[2 / s, 0, 0], [-2 / s, 0, 0]]))
    # all tokens: mean = 3 / 5 = 0.6; var = (2.4^2 + 0.6^2 + 0.4^2 + 1.6^2 + 0.6^2) / 5 = 9.2 / 5 = 1.84
    s = math.sqrt(1.84)
    expected = torch.tensor([[2.4 / s, -0.6 / s, 0.4 / s], [-1.6 / s, -0.6 / s, 0.0]])
    assert torch.allclose(whiten_advantages(adv, mask, keep_zeros=False), expected)
    # rows left out neither count nor move; nothing left to whiten gives 0
    out = whiten_advantages(adv, mask, rows=torch.tensor([True, False]))
    # row 0 alone: M = {3, 1}, mean = 2, var = (1^2 + (-1)^2 + (0-2)^2) / 2 = 3
    assert torch.allclose(out, torch.tensor([[1 / math.sqrt(3), 0, -1 / math.sqrt(3)], [0, 0, 0]]))
    assert torch.equal(whiten_advantages(torch.zeros(2, 3), mask), torch.zeros(2, 3))


def test_hand_computed_whitening_is_the_algo_default():
    # the raw advantages of `two_row_batch`: (-0.5, 0, -0.1, 0) and (-0.25, 0) (the zeros are the step ends).
    # M = {-0.5, -0.1, -0.25}: mean = -0.85 / 3 = -17/60; var = ((-13/60)^2 + (11/60)^2 + (2/60)^2 + 3 (17/60)^2) / 3
    #   = (169 + 121 + 4 + 867) / 3600 / 3 = 0.1075
    assert PUREConfig().whiten_advantages
    assert OmegaConf.load(CONF / "algo" / "pure.yaml").get("whiten_advantages", True)  # the yaml keeps it
    adv = ALGOS.get("pure")(two_row_batch(), cfg())
    s = math.sqrt(0.1075)
    assert torch.allclose(adv[0, 3:], torch.tensor([-13 / 60 / s, 0.0, 11 / 60 / s, 0.0]))
    assert torch.allclose(adv[1, 1:3], torch.tensor([2 / 60 / s, 0.0]))
    assert torch.all(adv[two_row_batch().response_mask == 0] == 0)


@pytest.mark.parametrize("mask_separators", [True, False])
def test_whitening_matches_the_reference_transcription(mask_separators):
    g = torch.Generator().manual_seed(1)
    n, width = 11, 13
    lengths = torch.randint(1, width + 1, (n,), generator=g)
    mask = (torch.arange(width) < lengths.unsqueeze(1)).float()
    adv = torch.randn(n, width, generator=g) * 3 + 0.7
    adv[torch.rand(n, width, generator=g) < 0.25] = 0.0  # separators (and a few exact-zero returns)
    adv = adv * mask
    ours = whiten_advantages(adv, mask, keep_zeros=mask_separators)
    theirs = reference_whitening([adv[i, : lengths[i]] for i in range(n)], mask_separators)
    for i in range(n):
        assert torch.allclose(ours[i, : lengths[i]].double(), theirs[i], atol=1e-5)
    assert torch.all(ours[mask == 0] == 0)


def test_registered_fn_whitens_its_raw_advantages_as_the_reference():
    g = torch.Generator().manual_seed(2)
    trajs = []
    for uid in range(3):
        for _ in range(4):
            k = int(torch.randint(2, 7, (1,), generator=g))
            trajs.append(Trajectory(uid, uid, "", [Step([1, 1], [2] * k, [-0.1] * k, "x", "x", float(k % 2), "a")]))
    batch = build_batch(trajs, pad_token_id=0)
    n = len(trajs)
    step_mask = torch.tensor([[True, True]] * n)
    ends = torch.stack([torch.tensor([0, len(t.steps[0].response_ids) - 1]) for t in trajs])
    batch = place_step_rewards(batch, torch.rand(n, 2, generator=g) - 0.5, step_mask, ends)
    raw = ALGOS.get("pure")(batch, cfg(whiten_advantages=False))
    white = ALGOS.get("pure")(batch, cfg())
    rows = [raw[i][batch.response_mask[i] > 0] for i in range(n)]
    for i, expected in enumerate(reference_whitening(rows)):
        assert torch.allclose(white[i][batch.response_mask[i] > 0].double(), expected, atol=1e-5)


# ---------------------------------------------------------------- problems without an answer
def test_answerless_rows_get_no_verifiable_term():
    p, ends, mask, solved, uid = two_responses()
    process_only, _ = pure_token_rewards(p, ends, mask, solved, uid, verifiable_coef=0.0)
    none, _ = pure_token_rewards(p, ends, mask, solved, uid, has_answer=torch.tensor([False, False]))
    assert torch.allclose(none, process_only)  # whatever reached their rewards (here 1 and 0)
    # a mixed group (not one problem, but defined): answered rows baseline on the other answered rows only
    outcome, group = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0, 0])
    lengths = torch.ones(3, 1)
    r, _ = pure_token_rewards(
        torch.zeros(3, 1), lengths.bool(), lengths, outcome, group, has_answer=torch.tensor([True, True, False])
    )
    assert torch.allclose(r[:, 0], torch.tensor([1.0, -1.0, 0.0]))


def test_answerless_math_problem_gets_only_process_rewards_in_pure(tmp_path):
    data = tmp_path / "pure.json"  # PURE's data files: one JSON array, "null" = no answer, ref_answer withheld
    records = [
        {"question": "What is 3 + 4?", "answer": "null", "ref_answer": "7", "level": "3"},
        {"question": "What is 2 * 5?", "answer": "10", "ref_answer": "null", "level": "3"},
    ]
    data.write_text(json.dumps(records, indent=2))
    env = MathEnv(data_path=str(data))
    trajs = []
    for seed, response in [(0, "3 + 4 = 7.\n\n\\boxed{7}"), (0, "\\boxed{8}"), (1, "\\boxed{10}"), (1, "\\boxed{9}")]:
        obs = env.reset(seed)
        res = env.step(response)
        k = 4
        trajs.append(
            Trajectory(
                seed,
                seed,
                "",
                [Step([1], [2] * k, [0.0] * k, response, response, res.reward, obs.anchor, info=res.info)],
            )
        )
    assert [t.steps[0].reward for t in trajs] == [0.0, 0.0, 1.0, 0.0]  # the right answer to problem 0 earns nothing
    assert [t.steps[0].info["has_answer"] for t in trajs] == [False, False, True, True]
    assert trajs[0].steps[0].info["success"]  # measured on the withheld answer, for the metrics only
    batch = build_batch(trajs, pad_token_id=0)
    assert answer_rows(batch).tolist() == [False, False, True, True]
    assert batch.has_answer.tolist() == [False, False, True, True]
    n = len(trajs)
    batch = place_step_rewards(
        batch, torch.tensor([[0.3, -0.2]] * n), torch.ones(n, 2, dtype=torch.bool), torch.tensor([[1, 3]] * n)
    )
    batch.rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])  # e.g. a penalty or a bonus folded in: still no signal for 0
    raw = dict(whiten_advantages=False)
    adv = ALGOS.get("pure")(batch, cfg(**raw))
    process_only = ALGOS.get("pure")(batch, cfg(verifiable_coef=0.0, **raw))
    assert torch.allclose(adv[:2], process_only[:2])  # no verifiable reward reaches the answerless rows' tokens
    assert not torch.allclose(adv[2:], process_only[2:])  # the answered problem's rows still get theirs
