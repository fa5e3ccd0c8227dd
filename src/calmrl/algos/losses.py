"""Token-level policy losses and the KL penalty, shared by the on-policy algorithms.

All inputs are [N, L] with `mask` selecting response tokens; losses are token means over the mask
(verl's "token-mean" aggregation), so each response token weighs the same.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over mask == 1. x, mask: [N, L]. Returns a scalar."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def ppo_clip_loss(
    logprobs,
    old_logprobs,
    advantages,
    mask,
    clip_ratio: float = 0.2,
    dual_clip: float | None = None,
    weights: torch.Tensor | None = None,
):
    """PPO-clip (Schulman et al., 2017): -min(rho*A, clip(rho, 1-eps, 1+eps)*A), rho = pi/pi_old.

    dual_clip = c > 1 (Ye et al., 2020, "Mastering Complex Control in MOBA Games with Deep RL"; verl's
    clip_ratio_c, 3.0): on tokens with A < 0 the loss is also capped at -c*A, so a token whose ratio has grown
    far above 1 cannot push the loss (and the update) without bound; tokens with A >= 0 are unchanged.
    weights: [N, L] per-token loss weights (truncated importance weights for the rollout/learner mismatch), or None.
    logprobs, old_logprobs, advantages, mask: [N, L]. Returns (loss scalar, clip fraction scalar).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -ratio * advantages
    clipped = -torch.clamp(ratio, 1.0 - clip_ratio, 1.0 + clip_ratio) * advantages
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -dual_clip * advantages), per_token)
    if weights is not None:
        per_token = per_token * weights
    loss = masked_mean(per_token, mask)
    # fraction of tokens whose objective the clip actually limits (verl's pg_clipfrac)
    clip_frac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_frac


def reinforce_loss(logprobs, advantages, mask, weights: torch.Tensor | None = None):
    """REINFORCE: -w * A * log pi(token), w the per-token `weights` (1 when None). logprobs, advantages, mask,
    weights: [N, L]. Returns a scalar."""
    per_token = -advantages * logprobs
    return masked_mean(per_token if weights is None else per_token * weights, mask)


def kl_low_var(logprobs, ref_logprobs):
    """Per-token KL(pi || pi_ref) by the low-variance non-negative "k3" estimator (Schulman, 2020):
    exp(ref - logp) - (ref - logp) - 1, as GRPO/GiGPO use. Inputs [N, L]; returns [N, L]."""
    log_ratio = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # keep exp() finite on outliers
    return torch.exp(log_ratio) - log_ratio - 1.0
