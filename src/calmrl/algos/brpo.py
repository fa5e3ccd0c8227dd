"""BRPO — Budget Relative Policy Optimization (Qi et al., 2025, "Optimizing Anytime Reasoning via Budget Relative
Policy Optimization", AnytimeReasoner), following its reference code (sail-sg/AnytimeReasoner,
`verl/trainer/ppo/brpo.py`: `compute_cot_advantage`, `compute_summary_advantage`).

A thinking trace of member g of a group (G traces for one problem) is cut at S budgets b_j = (B / S) j,
j = 1..S; after each cut A summaries are sampled and scored r[g, j, a] in {0, 1} (`rollout/budgeted.py`).
With the budget prior p_j (normalised; uniform: 1/S, linear: b_j / sum b, base: all mass on b_S), and
indices s, j = 0..S-1 below (segment s = thinking tokens (b_s, b_{s+1}]):

    r̄[g, j]   = mean_a r[g, j, a]
    R[g, s]   = sum_{j >= s} p_j r̄[g, j]                                     dense return of segment s
    V2[g, s]  = mean_{g'} R[g', s]                                            group baseline (0 for a group of 1)
    V1[g, s]  = (sum_{j < s} 2^j r̄[g, j] / sum_{j < s} 2^j) * sum_{j >= s} p_j  (V1[g, 0] = 0)
    A[g, s]   = R[g, s] - (s V1[g, s] + (S - s) V2[g, s]) / S                  (variance_reduction=brpo)

Every thinking token of segment s gets A[g, s]. Summary tokens: A_sum[g, j, a] = r[g, j, a] - mean of the
summaries of the same split (A > 1; budgets whose cut falls past the end of the trace share one split), or,
with A = 1, r - mean_{g'} r[g', j, 0]. `summary_method=grpo` trains only the last summary of the full budget.
`variance_reduction` v1only | v2only | none use V1, V2 or 0 as the baseline (the paper's ablations).
Invariant: S = 1, A = 1 gives A = r - mean_group r on both the trace and its summary (GRPO without std).
No KL by default (algo.kl_coef = 0), as in the paper.
"""

from __future__ import annotations

import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import group_index


def budget_prior(kind: str, num_budgets: int) -> torch.Tensor:
    """p_j over the S budgets b_j = (B / S) j, normalised: [S] float."""
    s = int(num_budgets)
    if kind == "uniform":
        p = torch.ones(s)
    elif kind == "linear":
        p = torch.arange(1, s + 1, dtype=torch.float32)  # proportional to b_j
    elif kind == "base":
        p = torch.zeros(s)
        p[-1] = 1.0
    else:
        raise ValueError(f"budget prior must be uniform, linear or base, got {kind!r}")
    return p / p.sum()


def brpo_advantages(
    scores: torch.Tensor,
    uid: torch.Tensor,
    prior: torch.Tensor,
    variance_reduction: str = "brpo",
    v1_discount: float = 2.0,
    split_key: torch.Tensor | None = None,
    summary_method: str = "brpo",
) -> dict[str, torch.Tensor]:
    """BRPO advantages of the thinking segments and the summaries (module docstring).

    scores: [N, S, A] float, one thinking trace per row; uid: [N] int64 group ids; prior: [S] (normalised here).
    split_key: [N, S] int64, equal values in a row = budgets whose summaries share a truncated prefix (default:
    all distinct). Returns {"think": A [N, S], "summary": [N, S, A], "returns": R [N, S], "v1": [N, S], "v2": [N, S]}.
    """
    scores = scores.float()
    n, s_count, a_count = scores.shape
    p = prior.float() / prior.float().sum()
    rbar = scores.mean(dim=2)  # [N, S]
    returns = (p * rbar).flip(1).cumsum(1).flip(1)  # R[g, s] = sum_{j >= s} p_j rbar[g, j]
    tail_p = p.flip(0).cumsum(0).flip(0)  # sum_{j >= s} p_j

    ids, num = group_index(uid)
    size = torch.zeros(num).index_add_(0, ids, torch.ones(n))
    group_sum = torch.zeros(num, s_count).index_add_(0, ids, returns)
    v2 = torch.where(size[ids].unsqueeze(1) > 1, group_sum[ids] / size[ids].unsqueeze(1), torch.zeros_like(returns))

    d = float(v1_discount) ** torch.arange(s_count, dtype=torch.float32)  # 2^j
    prev_num = torch.cumsum(d * rbar, dim=1)  # through j = s; V1 uses j < s, so shift right
    prev_num = torch.cat([torch.zeros(n, 1), prev_num[:, :-1]], dim=1)
    prev_den = torch.cat([torch.zeros(1), torch.cumsum(d, 0)[:-1]])
    v1 = torch.where(prev_den > 0, prev_num / prev_den.clamp(min=1e-30), torch.zeros_like(prev_num)) * tail_p

    s_idx = torch.arange(s_count, dtype=torch.float32)
    baseline = {
        "brpo": (s_idx * v1 + (s_count - s_idx) * v2) / s_count,
        "v1only": v1,
        "v2only": v2,
        "none": torch.zeros_like(returns),
    }.get(variance_reduction)
    if baseline is None:
        raise ValueError(f"variance_reduction must be brpo, v1only, v2only or none, got {variance_reduction!r}")
    think = returns - baseline

    if a_count > 1:  # mean of the summaries sharing the row's split
        key = torch.arange(s_count).expand(n, s_count) if split_key is None else split_key.long()
        split_ids, num_splits = group_index(
            torch.arange(n).unsqueeze(1).expand(n, s_count).reshape(-1), key.reshape(-1)
        )
        flat_ids = split_ids.repeat_interleave(a_count)  # [N * S * A], (row, budget) major like scores.reshape(-1)
        total = torch.zeros(num_splits).index_add_(0, flat_ids, scores.reshape(-1))
        count = torch.zeros(num_splits).index_add_(0, flat_ids, torch.ones(n * s_count * a_count))
        summary_base = (total / count)[flat_ids].view(n, s_count, a_count)
    else:  # one summary per budget: the group's mean at that budget
        sums = torch.zeros(num, s_count).index_add_(0, ids, scores[:, :, 0])
        summary_base = (sums[ids] / size[ids].unsqueeze(1)).unsqueeze(2)
    summary = scores - summary_base
    if summary_method == "grpo":
        keep = torch.zeros(s_count, a_count, dtype=torch.bool)
        keep[-1, -1] = True
        summary = torch.where(keep, summary, torch.zeros_like(summary))
    elif summary_method != "brpo":
        raise ValueError(f"summary_method must be brpo or grpo, got {summary_method!r}")
    return {"think": think, "summary": summary, "returns": returns, "v1": v1, "v2": v2}


def brpo_layout(batch, num_budgets: int, num_summaries: int):
    """Read the budgeted rollout's rows (`rollout/budgeted.py`): per trajectory, step 0 is the thinking row and
    step 1 + j A + a the a-th summary after budget j, whose reward is its score.

    Returns (traj_ids [N] dense trajectory of each row, scores [T, S, A], uid [T], think_len [T]).
    """
    s_count, a_count = int(num_budgets), int(num_summaries)
    traj_ids, num_traj = group_index(batch.traj)
    per_traj = torch.zeros(num_traj, dtype=torch.long).index_add_(0, traj_ids, torch.ones_like(traj_ids))
    if not bool((per_traj == 1 + s_count * a_count).all()) or int(batch.step.max()) > s_count * a_count:
        raise ValueError(
            f"algo=brpo needs 1 thinking row + {s_count} x {a_count} summary rows per trajectory (the budgeted "
            "rollout, rollout/budgeted.py); got trajectories of "
            f"{sorted(set(per_traj.tolist()))} rows"
        )
    is_summary = batch.step > 0
    j, a = torch.div(batch.step - 1, a_count, rounding_mode="floor"), (batch.step - 1) % a_count
    scores = torch.zeros(num_traj, s_count, a_count)
    scores[traj_ids[is_summary], j[is_summary], a[is_summary]] = batch.rewards[is_summary].float()
    uid = torch.zeros(num_traj, dtype=torch.long)
    uid[traj_ids] = batch.uid
    think_len = torch.zeros(num_traj, dtype=torch.long)
    think_len[traj_ids[~is_summary]] = batch.response_mask[~is_summary].sum(1).long()
    return traj_ids, scores, uid, think_len


def _budgeted_rollout(*args, **kwargs):
    """algo=brpo samples its own way; the trainer calls it instead of the episode loop."""
    from calmrl.rollout.budgeted import run_budgeted_episodes  # imported on use: the registry stays light

    return run_budgeted_episodes(*args, **kwargs)


@register("brpo", rollout=_budgeted_rollout)
def brpo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: A[g, s] on the thinking tokens of segment s, A_sum[g, j, a] on each summary's tokens."""
    s_count, a_count = int(cfg.num_budgets), int(cfg.num_summaries)
    seg_len = int(cfg.budget) // s_count
    traj_ids, scores, uid, think_len = brpo_layout(batch, s_count, a_count)
    budgets = seg_len * torch.arange(1, s_count + 1)
    split_key = torch.minimum(budgets.unsqueeze(0), think_len.unsqueeze(1))  # the cut each budget makes
    out = brpo_advantages(
        scores,
        uid,
        budget_prior(str(cfg.budget_prior), s_count),
        variance_reduction=str(cfg.variance_reduction),
        v1_discount=float(cfg.v1_discount),
        split_key=split_key,
        summary_method=str(cfg.summary_method),
    )
    mask = batch.response_mask > 0
    pos = torch.cumsum(mask.long(), dim=1) - 1  # index of each token within its row's response
    segment = torch.div(pos, seg_len, rounding_mode="floor").clamp(0, s_count - 1)
    think_adv = out["think"][traj_ids.unsqueeze(1), segment]  # [N, L]
    step = batch.step
    j = torch.div((step - 1).clamp(min=0), a_count, rounding_mode="floor")
    summary_adv = out["summary"][traj_ids, j, (step - 1).clamp(min=0) % a_count]  # [N]
    adv = torch.where((step == 0).unsqueeze(1), think_adv, summary_adv.unsqueeze(1).expand_as(think_adv))
    return adv * mask
