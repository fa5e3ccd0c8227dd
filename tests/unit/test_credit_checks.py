"""Credit checks (calmrl.credit_checks): zero credit split by cause on a batch whose answer is known, the checks fail
on deliberately broken estimators, and pass on every registered on-policy estimator with its shipped config."""

from __future__ import annotations

import pytest
import torch

from calmrl.algos import ALGOS
from calmrl.credit_checks import check_credit, credit_metrics
from calmrl.data import apply_penalty_rule, build_batch, fold_shaping, penalty_rule


def shipped_algo(name: str):
    from hydra import compose, initialize_config_dir

    from calmrl.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["run_name=t", f"algo={name}"]).algo


def estimate(name: str, batch):
    """`algo=name`'s advantages [N, L] as the trainer computes them (its folding and penalty rule first)."""
    algo, method = shipped_algo(name), ALGOS.get(name)
    batch = apply_penalty_rule(fold_shaping(batch, method.reads_token_rewards), penalty_rule(algo))
    g = torch.Generator().manual_seed(0)
    if method.needs_ref:
        batch.ref_logprobs = batch.old_logprobs + 0.05 * torch.randn(batch.old_logprobs.shape, generator=g)
    if method.needs_critic:
        batch.values = torch.randn(batch.response_mask.shape, generator=g) * batch.response_mask
    batch.advantages = method(batch, algo)
    return batch


@pytest.fixture()
def known(make_trajectory):
    """Group 0: one trajectory (2 steps); group 1: two with equal returns; group 2: two with different returns. Every
    step has 2 prompt and 3 response tokens."""
    trajs = [
        make_trajectory(0, [1.0, 0.0], response_len=3),
        make_trajectory(1, [1.0], response_len=3),
        make_trajectory(1, [0.0, 1.0], response_len=3),
        make_trajectory(2, [1.0], response_len=3),
        make_trajectory(2, [0.0], response_len=3),
    ]
    return build_batch(trajs, pad_token_id=0)


def test_grpo_zero_credit_is_attributed_to_the_singleton_and_the_flat_group(known):
    batch = estimate("grpo", known)
    m = check_credit(batch)
    tokens = 7 * 3  # 7 steps of 3 response tokens
    assert m["credit/singleton_groups"] == 1 and m["credit/flat_groups"] == 1
    assert m["credit/zero_adv_singleton_frac"] == pytest.approx(2 * 3 / tokens)  # group 0's 2 steps
    assert m["credit/zero_adv_flat_group_frac"] == pytest.approx(3 * 3 / tokens)  # group 1's 3 steps
    assert m["credit/zero_adv_other_frac"] == 0 and m["credit/dead_informative_groups"] == 0
    assert m["credit/zero_adv_token_frac"] == pytest.approx(5 * 3 / tokens)
    assert m["credit/offmask_adv_abs_max"] == 0
    assert m["credit/adv_return_corr"] > 0.5  # in group 2 the winner is credited, the loser blamed


def test_credit_on_prompt_tokens_fails_loudly(known):
    batch = estimate("grpo", known)
    batch.advantages = torch.roll(batch.advantages, shifts=-1, dims=1)  # off by one: the last prompt token credited
    assert credit_metrics(batch)["credit/offmask_adv_abs_max"] > 0
    with pytest.raises(ValueError, match="outside the response mask"):
        check_credit(batch)


def test_a_dropped_informative_group_fails_loudly(known):
    batch = estimate("grpo", known)
    batch.advantages[batch.uid == 2] = 0.0  # an estimator that silently loses the one group with a signal
    assert credit_metrics(batch)["credit/dead_informative_groups"] == 1
    with pytest.raises(ValueError, match="got no credit on any response token"):
        check_credit(batch)


def test_credit_against_the_outcome_is_measured(known):
    batch = estimate("grpo", known)
    metrics = credit_metrics(batch)
    assert metrics["credit/adv_sign_mismatch_frac"] == 0  # group 2: winner up, loser down
    assert metrics["credit/step_adv_better_mean"] > 0 > metrics["credit/step_adv_worse_mean"]
    winner, loser = batch.advantages[batch.uid == 2].sum(1) / 3  # group 2's two one-step trajectories
    assert metrics["credit/step_adv_better_mean"] == pytest.approx(float(winner))
    assert metrics["credit/step_adv_worse_mean"] == pytest.approx(float(loser))
    batch.advantages = -batch.advantages  # a sign-flipped estimator blames the winner
    assert credit_metrics(batch)["credit/adv_sign_mismatch_frac"] == 1
    assert credit_metrics(batch)["credit/adv_return_corr"] < -0.5


def test_credited_tokens_the_correction_masks_out_are_counted(known):
    from omegaconf import OmegaConf

    from calmrl.credit_checks import train_loss_mask
    from calmrl.rollout.mismatch import correct

    batch = estimate("grpo", known)
    learner = batch.old_logprobs.clone()
    learner[0, -1] += 5.0  # the learner's ratio on one token is far above correction_high
    cfg = OmegaConf.create({"correction": "mask", "correction_low": 0.5, "correction_high": 2.0})
    trained, _ = correct(batch, learner, cfg)
    metrics = credit_metrics(batch, trained=train_loss_mask(trained))
    assert metrics["credit/zero_credit_masked_frac"] == pytest.approx(1 / 21)  # 1 of 7 x 3 response tokens
    assert credit_metrics(batch)["credit/zero_credit_masked_frac"] == 0


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce_pp", "ppo", "gigpo", "ma_ppo"])
def test_every_on_policy_estimator_passes_the_checks(random_agent_trajectories, name):
    for seed in range(5):
        batch = estimate(name, build_batch(random_agent_trajectories(seed), pad_token_id=0))
        check_credit(batch)
