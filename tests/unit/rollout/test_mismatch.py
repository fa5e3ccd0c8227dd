"""The rollout/learner log-prob gap and its corrections (calmrl/rollout/mismatch.py), on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.algos.losses import ppo_clip_loss, reinforce_loss
from calmrl.data import Batch
from calmrl.rollout.mismatch import correct, mismatch_metrics

CFG = {"correction_cap": 2.0, "correction_low": 0.5, "correction_high": 2.0}


def batch_with(rollout_lp, mask):
    n, width = rollout_lp.shape
    zeros = torch.zeros(n)
    ints = torch.arange(n)
    return Batch(
        input_ids=torch.zeros(n, width, dtype=torch.long),
        attention_mask=torch.ones(n, width, dtype=torch.long),
        response_mask=mask,
        old_logprobs=rollout_lp,
        rewards=zeros,
        uid=ints,
        traj=ints,
        step=ints * 0,
        anchor=ints,
        invalid=torch.zeros(n, dtype=torch.bool),
        episode_return=zeros,
    )


# ratios pi_learner / pi_rollout on the three response tokens: e^1, 1, e^-1; the first column is the prompt
ROLLOUT = torch.tensor([[0.0, -1.0, -1.0, -1.0]])
LEARNER = torch.tensor([[5.0, 0.0, -1.0, -2.0]])
MASK = torch.tensor([[0.0, 1.0, 1.0, 1.0]])


def test_metrics_are_taken_on_response_tokens_only():
    m = mismatch_metrics(LEARNER, ROLLOUT, MASK)
    assert m["mismatch/logprob_abs_diff"] == pytest.approx(2 / 3)
    assert m["mismatch/logprob_abs_diff_max"] == pytest.approx(1.0)
    assert m["mismatch/ratio_min"] == pytest.approx(math.exp(-1)) and m["mismatch/ratio_max"] == pytest.approx(math.e)
    k3 = [(r - 1 - math.log(r)) for r in (math.e, 1.0, math.exp(-1))]  # r - 1 - log r
    assert m["mismatch/kl"] == pytest.approx(sum(k3) / 3)
    assert mismatch_metrics(LEARNER, LEARNER, MASK)["mismatch/kl"] == 0.0


def test_tis_recomputes_old_logprobs_and_caps_the_weights():
    batch = batch_with(ROLLOUT.clone(), MASK)
    out, m = correct(batch, LEARNER, OmegaConf.create({**CFG, "correction": "tis"}))
    assert torch.equal(out.old_logprobs, LEARNER * MASK)
    assert torch.allclose(out.loss_weights, torch.tensor([[0.0, 2.0, 1.0, math.exp(-1)]]))  # e capped at C=2
    assert m["mismatch/capped_frac"] == pytest.approx(1 / 3)
    assert torch.equal(batch.old_logprobs, ROLLOUT) and batch.loss_weights is None  # the input is unchanged


def test_mask_drops_out_of_range_tokens():
    out, m = correct(batch_with(ROLLOUT, MASK), LEARNER, OmegaConf.create({**CFG, "correction": "mask"}))
    assert torch.equal(out.response_mask, torch.tensor([[0.0, 0.0, 1.0, 0.0]]))  # e > 2 and e^-1 < 0.5 leave
    assert m["mismatch/masked_frac"] == pytest.approx(2 / 3) and out.loss_weights is None


def test_none_changes_nothing():
    batch = batch_with(ROLLOUT, MASK)
    out, m = correct(batch, LEARNER, OmegaConf.create({**CFG, "correction": "none"}))
    assert out is batch and m == {}


def test_loss_weights_scale_each_tokens_term():
    g = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(3, 5, generator=g) for _ in range(3))
    mask = (torch.rand(3, 5, generator=g) > 0.3).float()
    w = torch.rand(3, 5, generator=g) * 2
    ratio = torch.exp(logp - old)
    per_token = torch.maximum(-ratio * adv, -ratio.clamp(0.8, 1.2) * adv) * w
    loss, _ = ppo_clip_loss(logp, old, adv, mask, 0.2, None, w)
    assert loss == pytest.approx(float((per_token * mask).sum() / mask.sum()))
    assert reinforce_loss(logp, adv, mask, w) == pytest.approx(float((-adv * logp * w * mask).sum() / mask.sum()))
    assert (
        ppo_clip_loss(logp, old, adv, mask, 0.2, None, torch.ones_like(w))[0]
        == ppo_clip_loss(logp, old, adv, mask, 0.2)[0]
    )


# ---------------------------------------------------------------- against verl's rollout correction
# Transcribed from verl's verl/trainer/ppo/rollout_corr_helper.py (volcengine/verl b178a3c, January 2026), the
# token-level paths of compute_rollout_correction_and_rejection_mask in its decoupled mode: old_log_prob is the
# training policy's recomputed log-prob, rollout_log_prob the engine's; batch normalisation off.
SAFETY_BOUND = 20.0


def verl_rollout_is_weights(old_log_prob, rollout_log_prob, response_mask, rollout_is_threshold):
    """compute_rollout_correction_weights(rollout_is="token")."""
    log_ratio = old_log_prob - rollout_log_prob
    weights = torch.exp(torch.clamp(log_ratio, min=-SAFETY_BOUND, max=SAFETY_BOUND)) * response_mask
    return weights.clamp(max=rollout_is_threshold).detach()


def verl_rollout_rs_token_k1(old_log_prob, rollout_log_prob, response_mask, lower, upper):
    """compute_rollout_rejection_mask(rollout_rs="token_k1", rollout_rs_threshold=f"{lower}_{upper}")."""
    log_ratio_safe = torch.clamp(old_log_prob - rollout_log_prob, min=-SAFETY_BOUND, max=SAFETY_BOUND)
    token_k1 = -log_ratio_safe
    keep = (token_k1 >= math.log(lower)) & (token_k1 <= math.log(upper))
    return (response_mask * keep.to(old_log_prob.dtype)).to(response_mask.dtype)


def verl_k3_kl(old_log_prob, rollout_log_prob, response_mask):
    """compute_offpolicy_metrics(...)["k3_kl"]."""
    log_ratio = old_log_prob - rollout_log_prob
    k3 = torch.exp(log_ratio) - log_ratio - 1
    return float((k3 * response_mask).sum() / response_mask.sum())


def random_gap(seed, spread):
    g = torch.Generator().manual_seed(seed)
    rollout = -torch.rand(6, 9, generator=g) * 4
    learner = rollout + torch.randn(6, 9, generator=g) * spread
    mask = (torch.rand(6, 9, generator=g) > 0.25).float()
    mask[0] = 1.0  # at least one valid token
    return learner, rollout, mask


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("spread", [1e-3, 0.3, 2.0])
def test_tis_and_mask_match_verl_token_level_correction(seed, spread):
    learner, rollout, mask = random_gap(seed, spread)
    cfg = {**CFG, "correction_cap": 1.5, "correction_low": 0.6, "correction_high": 1 / 0.6}
    tis, _ = correct(batch_with(rollout, mask), learner, OmegaConf.create({**cfg, "correction": "tis"}))
    torch.testing.assert_close(tis.loss_weights, verl_rollout_is_weights(learner, rollout, mask, 1.5))
    # decoupled mode: the PPO ratio's old log-prob is the learner's recomputation on the response tokens
    torch.testing.assert_close(tis.old_logprobs * mask, learner * mask)
    masked, _ = correct(batch_with(rollout, mask), learner, OmegaConf.create({**cfg, "correction": "mask"}))
    torch.testing.assert_close(masked.response_mask, verl_rollout_rs_token_k1(learner, rollout, mask, 0.6, 1 / 0.6))
    if spread < 1.0:  # verl's k3 does not clamp the log-ratio at 20; calmrl's does (mismatch_metrics)
        # in float64: at a 1e-3 gap, exp(x) - 1 - x in float32 is mostly rounding, summed in another order
        learner, rollout, mask = learner.double(), rollout.double(), mask.double()
        assert mismatch_metrics(learner, rollout, mask)["mismatch/kl"] == pytest.approx(
            verl_k3_kl(learner, rollout, mask), rel=1e-9
        )


def test_mask_bounds_the_is_ratio_where_verl_token_k1_bounds_its_inverse():
    """verl's token_k1 statistic is -log(pi_train / pi_rollout), so its "lower_upper" bounds apply to
    pi_rollout / pi_train; calmrl's correction_low/high bound the importance weight pi_learner / pi_rollout, the
    ratio TIS caps. They agree when low = 1 / high (the default 0.5, 2); otherwise calmrl's [low, high] is verl's
    [1 / high, 1 / low] (docs/algos/rollout_correction.md)."""
    learner, rollout, mask = random_gap(7, 0.5)
    cfg = OmegaConf.create({**CFG, "correction": "mask", "correction_low": 0.8, "correction_high": 1.5})
    ours = correct(batch_with(rollout, mask), learner, cfg)[0].response_mask
    assert not torch.equal(ours, verl_rollout_rs_token_k1(learner, rollout, mask, 0.8, 1.5))
    torch.testing.assert_close(ours, verl_rollout_rs_token_k1(learner, rollout, mask, 1 / 1.5, 1 / 0.8))
