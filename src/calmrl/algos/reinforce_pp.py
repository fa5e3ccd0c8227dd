"""REINFORCE++ (Hu, 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models"),
as implemented in OpenRLHF and verl: a critic-free token-level REINFORCE with the KL folded into the reward
and advantages whitened over the whole batch (no per-prompt baseline).

Per row n with response tokens t = 1..T (the row's last response token is T):
    r_t = -kl_beta * (log pi_old(y_t) - log pi_ref(y_t))  +  [t == T] * outcome_n       (k1 KL estimate)
    G_t = sum_{k >= t} gamma^(k - t) r_k                                                 (reverse cumsum)
    A_t = (G_t - mean(G)) / (std(G) + eps)
where mean/std (unbiased) run over ALL response tokens of the batch; A is 0 outside the response mask.
Dense rewards from a shaper (`batch.token_rewards`) are added to r_t before the return.

Multi-turn convention: a batch has one row per step (model turn). Each step row is treated as its own
sequence: the return does not flow across turns, and the outcome added at a step's last response token is
its trajectory's `episode_return`, less the row's own invalid-action penalty (`penalty_rule=row`, as verl-agent
puts the penalty on the offending row's last token), so the steps of a trajectory share the outcome.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import on_last_token, row_scores


def reinforce_pp_token_rewards(
    outcome: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    response_mask: torch.Tensor,
    kl_beta: float,
) -> torch.Tensor:
    """Per-token rewards: -kl_beta * (logprobs - ref_logprobs) on response tokens, plus outcome[n] at the
    last response token of row n; 0 outside the mask.

    outcome: [N] float; logprobs, ref_logprobs, response_mask: [N, L]. Returns [N, L] float.
    Rows without response tokens get all zeros.
    """
    mask = response_mask.float()
    kl_penalty = -float(kl_beta) * (logprobs.float() - ref_logprobs.float()) * mask
    if mask.numel() == 0:
        return kl_penalty
    return kl_penalty + on_last_token(outcome, mask)


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0, eps: float = 1e-6
) -> torch.Tensor:
    """Token returns G_t = sum_{k>=t} gamma^(k-t) r_k along each row's response tokens, whitened over all
    response tokens of the batch (masked mean, unbiased std); 0 outside the mask.

    token_rewards, response_mask: [N, L]. Returns advantages [N, L] float.
    Discounting counts response tokens only (masked positions neither add reward nor decay the return).
    The scan for gamma != 1 is a loop over token positions, vectorized over rows.
    """
    mask = response_mask.float()
    rewards = token_rewards.float() * mask
    if gamma == 1.0:
        returns = rewards.flip(1).cumsum(1).flip(1)
    else:
        returns = torch.zeros_like(rewards)
        acc = torch.zeros(rewards.shape[0], dtype=rewards.dtype)
        for t in range(rewards.shape[1] - 1, -1, -1):
            acc = torch.where(mask[:, t] > 0, rewards[:, t] + gamma * acc, acc)
            returns[:, t] = acc
    count = mask.sum()
    mean = (returns * mask).sum() / count.clamp(min=1.0)
    var = (((returns - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1.0)
    return (returns - mean) / (var.sqrt() + eps) * mask


@register("reinforce_pp", requires=("ref_logprobs",), reads_token_rewards=True)
def reinforce_pp(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: REINFORCE++ whitened token returns; each step row's outcome is its trajectory's
    episode return less the row's own invalid-action penalty (penalty_rule=row, verl-agent; 0 once folded),
    see the module docstring for the multi-turn convention."""
    if batch.ref_logprobs is None:
        raise ValueError("reinforce_pp needs reference log-probs; the trainer fills batch.ref_logprobs")
    rewards = reinforce_pp_token_rewards(
        row_scores(batch.episode_return, batch.penalty),
        batch.old_logprobs,
        batch.ref_logprobs,
        batch.response_mask,
        float(cfg.kl_beta),
    )
    if batch.token_rewards is not None:
        rewards = rewards + batch.token_rewards.float() * batch.response_mask
    return reinforce_pp_advantages(rewards, batch.response_mask, gamma=float(cfg.gamma), eps=float(cfg.eps))
