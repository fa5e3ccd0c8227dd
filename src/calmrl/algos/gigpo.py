"""GiGPO — Group-in-Group Policy Optimization (Feng et al., 2025, arXiv:2505.10978), critic-free credit
assignment for multi-turn agents (ALFWorld, WebShop).

Rows are steps (one model turn each); the G trajectories sampled for one task share a `uid`.
Two nested groupings give each step an advantage A = A^E + omega * A^S:

Episode level (Eq. 3), GRPO over the undiscounted trajectory returns R_i = sum_t r_{i,t} in the group:
    A^E_i = (R_i - mean_j R_j) / (std_j R_j + eps)        norm="std"
    A^E_i =  R_i - mean_j R_j                             norm="mean"
    episode_stats="trajectory": one member per trajectory (the paper's definition);
    episode_stats="step_rows": one member per step row, so long trajectories weigh more in the mean and
    std (what the public reference code does).

Step level (Eqs. 5-7): within a group, the steps acting from the same anchor state (the raw env
observation, without history) form a step group, across trajectories and across revisits inside one
trajectory. Each step's value is its discounted return from that step,
    G_t = sum_k gamma^k r_{t+k}        (gamma = 0.95)
    A^S_t = (G_t - mean_stepgroup G) / (std_stepgroup G + eps)   (G_t - mean for norm="mean")
A group (episode or step) of one member gets 0; std is the unbiased sample std.

Anchors are `exact` (equal strings) or `similarity` (anchor texts whose rapidfuzz ratio >= threshold,
default 0.9, clustered greedily inside each group; see `similarity_anchor_ids`).

The invalid-action penalty of the paper (-0.1 for a format-invalid response) is not applied here: the
rollout already folds `env.invalid_penalty` into each step's reward, so `batch.rewards` carries it.
"""

from __future__ import annotations

import numpy as np
import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import (
    discounted_reverse_cumsum,
    first_row_of_each,
    group_index,
    normalize_in_groups,
    to_tokens,
)

EPISODE_STATS = ("trajectory", "step_rows")


def gigpo_advantages(
    rewards: torch.Tensor,
    uid: torch.Tensor,
    traj: torch.Tensor,
    step: torch.Tensor,
    anchor: torch.Tensor,
    gamma: float = 0.95,
    omega: float = 1.0,
    norm: str = "std",
    episode_stats: str = "trajectory",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-step GiGPO advantages A^E + omega * A^S (see the module docstring).

    rewards: [N] float, each step's reward. uid: [N] int64 group (task) of the row's trajectory.
    traj: [N] int64 trajectory id (unique across the batch). step: [N] int64 position of the row in its
    trajectory (0..len-1). anchor: [N] int64 id of the state the step acted from (equal ids = same state;
    step groups are rows sharing (uid, anchor)). Rows may come in any order. Returns [N] float.
    Vectorized: group ids via `torch.unique`, segment reductions; only the return scan loops (over time).
    """
    n = rewards.numel()
    if not all(t.numel() == n for t in (uid, traj, step, anchor)):
        raise ValueError("rewards, uid, traj, step and anchor must all have N elements")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"episode_stats must be one of {EPISODE_STATS}, got {episode_stats!r}")
    if norm not in ("std", "mean"):
        raise ValueError(f"norm must be 'std' or 'mean', got {norm!r}")
    rewards = rewards.float()
    if n == 0:
        return rewards

    # Episode level: undiscounted returns (summed in float64 so row order cannot change the float32 value).
    rep, inverse = first_row_of_each(traj)  # one row per trajectory; inverse: row -> trajectory
    returns = torch.zeros(rep.numel(), dtype=torch.float64).index_add_(0, inverse, rewards.double()).float()
    if episode_stats == "trajectory":
        episode = normalize_in_groups(returns, uid[rep], norm=norm, eps=eps)[inverse]
    else:
        episode = normalize_in_groups(returns[inverse], uid, norm=norm, eps=eps)

    # Step level: discounted return-to-go, normalized among the rows of the same (uid, anchor).
    to_go = discounted_reverse_cumsum(rewards, traj, step, gamma)
    step_group, _ = group_index(uid, anchor)
    step_level = normalize_in_groups(to_go, step_group, norm=norm, eps=eps)
    return episode + omega * step_level


def similarity_anchor_ids(texts: list[str], uid: torch.Tensor, threshold: float = 0.9) -> torch.Tensor:
    """Anchor ids from greedy similarity clustering of anchor texts within each uid group.

    Per group, the distinct texts in order of first appearance are visited once each: a text joins the
    first existing cluster whose representative (its first member) has similarity >= threshold, else it
    founds a new cluster. Similarity is rapidfuzz `fuzz.ratio / 100` (normalized Indel, i.e. LCS based),
    computed for all pairs of the group's distinct texts with one `process.cdist` call; comparisons allow
    1e-9 of float rounding. Identical texts always share a cluster; clusters never span groups.

    texts: [N] strings; uid: [N] int64. Returns [N] int64 dense ids, one per (uid, cluster), numbered in
    order of first appearance.
    """
    from rapidfuzz import fuzz, process

    uids = uid.tolist()
    if len(texts) != len(uids):
        raise ValueError(f"got {len(texts)} anchor texts for {len(uids)} rows")
    distinct: dict[tuple[int, str], int] = {}  # (uid, text) -> index among all distinct pairs
    by_group: dict[int, tuple[list[str], list[int]]] = {}  # uid -> its distinct texts and their indices
    row_key = np.empty(len(texts), dtype=np.int64)
    for row, key in enumerate(zip(uids, texts, strict=True)):
        index = distinct.get(key)
        if index is None:
            index = distinct[key] = len(distinct)
            texts_of_group, slots = by_group.setdefault(key[0], ([], []))
            texts_of_group.append(key[1])
            slots.append(index)
        row_key[row] = index

    cluster_of = np.empty(len(distinct), dtype=np.int64)  # distinct pair -> global cluster id
    next_id = 0
    for group_texts, members in by_group.values():
        m = len(group_texts)
        local = np.zeros(m, dtype=np.int64)
        if m > 1:
            similar = process.cdist(group_texts, group_texts, scorer=fuzz.ratio, dtype=np.float64) / 100.0
            similar = similar >= threshold - 1e-9
            reps: list[int] = [0]  # representative (first member) of each cluster, in founding order
            for i in range(1, m):
                hits = np.flatnonzero(similar[i, reps])
                if hits.size:
                    local[i] = hits[0]
                else:
                    local[i] = len(reps)
                    reps.append(i)
            clusters = len(reps)
        else:
            clusters = m
        cluster_of[members] = local + next_id
        next_id += clusters
    return torch.from_numpy(cluster_of[row_key])


@register("gigpo")
def gigpo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: each step's GiGPO advantage on every response token of that step.

    `cfg.anchor`: exact uses `batch.anchor`; similarity clusters `batch.anchor_text` within each group.
    The invalid-action penalty is already in `batch.rewards` (env.invalid_penalty, added by the rollout).
    """
    mode = str(cfg.anchor)
    if mode == "exact":
        anchor = batch.anchor
    elif mode == "similarity":
        if len(batch.anchor_text) != len(batch.rewards):
            raise ValueError("anchor=similarity needs batch.anchor_text (one anchor string per row)")
        anchor = similarity_anchor_ids(batch.anchor_text, batch.uid, cfg.similarity_threshold)
    else:
        raise ValueError(f"anchor must be 'exact' or 'similarity', got {mode!r}")
    adv = gigpo_advantages(
        batch.rewards,
        batch.uid,
        batch.traj,
        batch.step,
        anchor,
        gamma=cfg.gamma,
        omega=cfg.omega,
        norm=str(cfg.norm_adv),
        episode_stats=str(cfg.episode_stats),
        eps=cfg.eps,
    )
    return to_tokens(adv, batch.response_mask)
