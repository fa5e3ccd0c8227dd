"""The rollout engine's sampling log-probs against the learner's own, on the same tokens: the gap, and its fix.

An engine (vLLM's kernels, or HF's generate with a KV cache and left padding) does not score tokens exactly as
the learner's training forward pass does, so pi_rollout != pi_learner even right after a weight sync; in 16-bit
precision the gap grows large enough to bias the policy gradient (Yao et al., 2025, "Your efficient RL framework
secretly brings you off-policy RL training"). Every iteration measures it; `rollout.correction` can correct it:

- `tis`: truncated importance sampling. The PPO ratio is taken against the learner's recomputed log-probs
  (old_logprobs := log pi_learner) and each token's loss is weighted by min(pi_learner / pi_rollout, C),
  C = `rollout.correction_cap` (verl's token-level `rollout_is` with `rollout_is_threshold`, decoupled mode).
- `mask`: the same recomputed old log-probs, and tokens whose ratio pi_learner / pi_rollout falls outside
  [`correction_low`, `correction_high`] leave the loss (verl's `rollout_rs=token_k1`, whose bounds are on the
  inverse ratio: the same for low = 1 / high).

docs/algos/rollout_correction.md compares both with verl's code.
- `none`: the sampling log-probs are the PPO ratio's old log-probs, as before (only the gap is logged).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from calmrl.algos.losses import masked_mean
from calmrl.config import ROLLOUT_CORRECTIONS


def mismatch_metrics(learner_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    """The gap on the response tokens. learner_logprobs, rollout_logprobs, mask: [N, L].

    mismatch/kl is the k3 estimate of KL(pi_rollout || pi_learner) (the tokens were drawn from pi_rollout):
    r - 1 - log r with r = pi_learner / pi_rollout, non-negative per token."""
    on = mask > 0
    if not bool(on.any()):
        return {}
    log_ratio = (learner_logprobs - rollout_logprobs)[on].clamp(-20.0, 20.0)
    ratio = log_ratio.exp()
    return {
        "mismatch/logprob_abs_diff": float(log_ratio.abs().mean()),
        "mismatch/logprob_abs_diff_max": float(log_ratio.abs().max()),
        "mismatch/kl": float((ratio - 1.0 - log_ratio).mean()),
        "mismatch/ratio_min": float(ratio.min()),
        "mismatch/ratio_max": float(ratio.max()),
    }


def correct(batch, learner_logprobs: torch.Tensor, rollout_cfg):
    """The batch the learner trains on under `rollout_cfg.correction`, and the share of tokens it changed.

    batch.old_logprobs [N, L] are the engine's sampling log-probs; learner_logprobs [N, L] the learner's of the
    same tokens before the update. Returns (batch, metrics): `tis` sets old_logprobs to the learner's and
    `loss_weights` [N, L] to min(ratio, C); `mask` sets the same old_logprobs and zeroes `response_mask` where the
    ratio is out of range. The input batch is not changed."""
    mode = str(rollout_cfg.get("correction", "none"))
    if mode == "none":
        return batch, {}
    mask = batch.response_mask
    ratio = torch.exp((learner_logprobs - batch.old_logprobs).clamp(-20.0, 20.0)) * mask
    recomputed = learner_logprobs * mask
    if mode == "tis":
        cap = float(rollout_cfg.correction_cap)
        weights = torch.clamp(ratio, max=cap)
        changed = masked_mean((ratio > cap).float(), mask)
        return replace(batch, old_logprobs=recomputed, loss_weights=weights), {"mismatch/capped_frac": float(changed)}
    if mode == "mask":
        keep = ((ratio >= float(rollout_cfg.correction_low)) & (ratio <= float(rollout_cfg.correction_high))).float()
        dropped = masked_mean(1.0 - keep, mask)
        return replace(batch, old_logprobs=recomputed, response_mask=mask * keep), {
            "mismatch/masked_frac": float(dropped)
        }
    raise ValueError(f"rollout.correction={mode} is not one of {list(ROLLOUT_CORRECTIONS)}")
