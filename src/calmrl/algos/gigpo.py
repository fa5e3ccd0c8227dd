"""GiGPO — Group-in-Group Policy Optimization (Feng et al., 2025, arXiv:2505.10978), critic-free credit
assignment for multi-turn agents (ALFWorld, WebShop).

Rows are steps (one model turn each); the G trajectories sampled for one task share a `uid`.
Two nested groupings give each step an advantage A = A^E + omega * A^S:

Episode level (Eq. 3), GRPO over the undiscounted trajectory returns R_i = sum_t r_{i,t} in the group:
    A^E_i = (R_i - mean_j R_j) / (std_j R_j + eps)        norm="std"   (verl-agent: mean_std_norm)
    A^E_i =  R_i - mean_j R_j                             norm="mean"  (verl-agent: mean_norm)
    episode_stats="step_rows" (default): one member per step row, so long trajectories weigh more in the
    mean and std (verl-agent's `episode_norm_reward`, compute_mean_std_cross_steps=True);
    episode_stats="trajectory": one member per trajectory (the paper's Eq. 3).
    A one-member group keeps its raw score (singleton="raw": verl-agent's mean 0, std 1) or gets 0.

Step level (Eqs. 5-7): within a group, the steps acting from the same anchor state (the raw env
observation, without history) form a step group, across trajectories and across revisits inside one
trajectory. Each step's value is its discounted return from that step,
    G_t = sum_k gamma^k r_{t+k}        (gamma = 0.95)
    A^S_t = (G_t - mean_stepgroup G) / (std_stepgroup G + eps)   (G_t - mean for norm="mean")
A step group of one member gets 0; std is the unbiased sample std.

Anchors are `exact` (equal strings) or `similarity` (anchor texts whose similarity >= threshold, 0.95,
clustered greedily inside each group as verl-agent's `build_step_group` does; see `similarity_anchor_ids`).

The invalid-action penalty c (env.invalid_penalty, 0.1) follows verl-agent's `apply_invalid_action_penalty`
by default (penalty_rule=row): the returns above are of the env's rewards only, and then the offending row
alone loses c from its episode score and from its step return,
    score_n = R_traj(n) - c [n invalid]          G'_n = G_n - c [n invalid]
so the penalty is never discounted into earlier steps' returns nor summed into other rows' scores.
penalty_rule=folded puts it in the step reward instead (then `penalty` is 0 here and rewards carry it).
"""

from __future__ import annotations

import numpy as np
import torch

from calmrl.algos.registry import register
from calmrl.algos.segments import (
    EPISODE_STATS,
    discounted_reverse_cumsum,
    episode_members,
    first_row_of_each,
    group_index,
    normalize_in_groups,
    to_tokens,
)

SIMILARITY_SCORERS = ("difflib", "indel")


def gigpo_advantages(
    rewards: torch.Tensor,
    uid: torch.Tensor,
    traj: torch.Tensor,
    step: torch.Tensor,
    anchor: torch.Tensor,
    penalty: torch.Tensor | None = None,
    gamma: float = 0.95,
    omega: float = 1.0,
    norm: str = "std",
    episode_stats: str = "step_rows",
    singleton: str = "raw",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Per-step GiGPO advantages A^E + omega * A^S (see the module docstring).

    rewards: [N] float, each step's reward (the env's). uid: [N] int64 group (task) of the row's trajectory.
    traj: [N] int64 trajectory id (unique across the batch). step: [N] int64 position of the row in its
    trajectory (0..len-1). anchor: [N] int64 id of the state the step acted from (equal ids = same state;
    step groups are rows sharing (uid, anchor)). penalty: [N] float, the row's own invalid-action penalty
    (None = 0). Rows may come in any order. Returns [N] float.
    Vectorized: group ids via `torch.unique`, segment reductions; only the return scan loops (over time).
    """
    n = rewards.numel()
    penalty = torch.zeros(n) if penalty is None else penalty.float()
    if not all(t.numel() == n for t in (uid, traj, step, anchor, penalty)):
        raise ValueError("rewards, uid, traj, step, anchor and penalty must all have N elements")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"episode_stats must be one of {EPISODE_STATS}, got {episode_stats!r}")
    if norm not in ("std", "mean"):
        raise ValueError(f"norm must be 'std' or 'mean', got {norm!r}")
    rewards = rewards.float()
    if n == 0:
        return rewards

    # Episode level: undiscounted returns (summed in float64 so row order cannot change the float32 value),
    # normalized over the members `episode_stats` names (as algo=grpo does).
    _, inverse = first_row_of_each(traj)  # inverse: row -> trajectory
    returns = torch.zeros(int(inverse.max()) + 1, dtype=torch.float64).index_add_(0, inverse, rewards.double())
    scores, groups, member = episode_members(returns.float()[inverse], penalty, uid, traj, episode_stats)
    episode = normalize_in_groups(scores, groups, norm=norm, eps=eps, singleton=singleton)[member]

    # Step level: discounted return-to-go (less the row's own penalty), normalized among the rows of the
    # same (uid, anchor); a step group of one has nothing to compare with and gets 0, as in verl-agent.
    to_go = discounted_reverse_cumsum(rewards, traj, step, gamma) - penalty
    step_group, _ = group_index(uid, anchor)
    step_level = normalize_in_groups(to_go, step_group, norm=norm, eps=eps)
    return episode + omega * step_level


def similarity_anchor_ids(
    texts: list[str], uid: torch.Tensor, threshold: float = 0.95, scorer: str = "difflib"
) -> torch.Tensor:
    """Anchor ids from greedy similarity clustering of anchor texts within each uid group.

    Per group, the distinct texts in order of first appearance are visited once each: a text joins the
    first existing cluster whose representative (its first member) has similarity >= threshold, else it
    founds a new cluster. Visiting distinct texts instead of rows (as verl-agent's `build_step_group` does)
    changes nothing: a repeated text meets the same representatives in the same order and joins the cluster
    its first occurrence joined. Identical texts always share a cluster; clusters never span groups.

    scorer="difflib": `difflib.SequenceMatcher(None, text, representative).ratio()`, exactly verl-agent's
    `are_similar` (argument order included: the ratio is not symmetric), one pair at a time.
    scorer="indel": rapidfuzz `fuzz.ratio / 100` (normalized Indel, LCS based; >= difflib's ratio, equal on
    most texts), every pair of the group's distinct texts in one `process.cdist` call, 1e-9 of float slack.

    texts: [N] strings; uid: [N] int64. Returns [N] int64 dense ids, one per (uid, cluster), numbered in
    order of first appearance.
    """
    if scorer not in SIMILARITY_SCORERS:
        raise ValueError(f"similarity scorer must be one of {SIMILARITY_SCORERS}, got {scorer!r}")
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

    join = _greedy_difflib if scorer == "difflib" else _greedy_indel
    cluster_of = np.empty(len(distinct), dtype=np.int64)  # distinct pair -> global cluster id
    next_id = 0
    for group_texts, members in by_group.values():
        local = join(group_texts, threshold)
        cluster_of[members] = local + next_id
        next_id += int(local.max()) + 1
    return torch.from_numpy(cluster_of[row_key])


def _greedy_difflib(texts: list[str], threshold: float) -> np.ndarray:
    """Cluster of each distinct text [m], founding order, with difflib's ratio against each representative."""
    from difflib import SequenceMatcher

    local = np.zeros(len(texts), dtype=np.int64)
    reps: list[str] = texts[:1]
    for i in range(1, len(texts)):
        hit = next((k for k, rep in enumerate(reps) if SequenceMatcher(None, texts[i], rep).ratio() >= threshold), None)
        if hit is None:
            hit = len(reps)
            reps.append(texts[i])
        local[i] = hit
    return local


def _greedy_indel(texts: list[str], threshold: float) -> np.ndarray:
    """Cluster of each distinct text [m], founding order, from one all-pairs rapidfuzz similarity matrix."""
    from rapidfuzz import fuzz, process

    local = np.zeros(len(texts), dtype=np.int64)
    if len(texts) < 2:
        return local
    similar = process.cdist(texts, texts, scorer=fuzz.ratio, dtype=np.float64) / 100.0 >= threshold - 1e-9
    reps: list[int] = [0]  # representative (first member) of each cluster, in founding order
    for i in range(1, len(texts)):
        hits = np.flatnonzero(similar[i, reps])
        if hits.size:
            local[i] = hits[0]
        else:
            local[i] = len(reps)
            reps.append(i)
    return local


@register("gigpo")
def gigpo(batch, cfg) -> torch.Tensor:
    """advantages [N, L]: each step's GiGPO advantage on every response token of that step.

    `cfg.anchor`: exact uses `batch.anchor`; similarity clusters `batch.anchor_text` within each group.
    `batch.penalty` holds each row's own invalid-action penalty (0 everywhere once folded into the rewards).
    """
    mode = str(cfg.anchor)
    if mode == "exact":
        anchor = batch.anchor
    elif mode == "similarity":
        if len(batch.anchor_text) != len(batch.rewards):
            raise ValueError("anchor=similarity needs batch.anchor_text (one anchor string per row)")
        anchor = similarity_anchor_ids(batch.anchor_text, batch.uid, cfg.similarity_threshold, str(cfg.similarity))
    else:
        raise ValueError(f"anchor must be 'exact' or 'similarity', got {mode!r}")
    adv = gigpo_advantages(
        batch.rewards,
        batch.uid,
        batch.traj,
        batch.step,
        anchor,
        penalty=batch.penalty,
        gamma=cfg.gamma,
        omega=cfg.omega,
        norm=str(cfg.norm_adv),
        episode_stats=str(cfg.episode_stats),
        singleton=str(cfg.singleton),
        eps=cfg.eps,
    )
    return to_tokens(adv, batch.response_mask)
