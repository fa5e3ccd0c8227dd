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
