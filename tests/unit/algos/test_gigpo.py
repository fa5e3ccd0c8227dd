import difflib
import math
import random
from collections import defaultdict

import pytest
import torch
from omegaconf import OmegaConf
from rapidfuzz import fuzz

from calmrl.algos import ALGOS
from calmrl.algos.gigpo import gigpo_advantages, similarity_anchor_ids
from calmrl.algos.grpo import grpo_advantages
from calmrl.data import Step, Trajectory, apply_penalty_rule, build_batch
from calmrl.schemas.algo import GiGPOConfig

R2 = 1 / math.sqrt(2)  # a group of two with eps=0 and norm=std always gives +-1/sqrt(2)


def reference_gigpo(
    rewards,
    uid,
    traj,
    step,
    anchor,
    gamma=0.95,
    omega=1.0,
    norm="std",
    episode_stats="trajectory",
    singleton="zero",
    eps=1e-6,
):
    """Plain-loop GiGPO over Python lists (the paper's equations), written independently of the vectorized
    code; `singleton` is what a one-member episode group gets ("zero", or "raw": mean 0 and std 1)."""
    n = len(rewards)
    rows_of = defaultdict(dict)  # trajectory -> {step: row}
    for i in range(n):
        rows_of[traj[i]][step[i]] = i
    episode_return = {t: sum(rewards[i] for i in rows.values()) for t, rows in rows_of.items()}
    to_go = [0.0] * n
    for rows in rows_of.values():
        acc = 0.0
        for s in sorted(rows, reverse=True):
            acc = rewards[rows[s]] + gamma * acc
            to_go[rows[s]] = acc

    def normalized(x, members, alone=0.0):
        if len(members) == 1:
            return alone
        mean = sum(members) / len(members)
        std = math.sqrt(sum((m - mean) ** 2 for m in members) / (len(members) - 1))
        return (x - mean) / (std + eps) if norm == "std" else x - mean

    episode_members = defaultdict(list)
    if episode_stats == "trajectory":
        for t, rows in rows_of.items():
            episode_members[uid[next(iter(rows.values()))]].append(episode_return[t])
    else:
        for i in range(n):
            episode_members[uid[i]].append(episode_return[traj[i]])
    step_members = defaultdict(list)
    for i in range(n):
        step_members[(uid[i], anchor[i])].append(to_go[i])
    out = []
    for i in range(n):
        r = episode_return[traj[i]]
        a_e = normalized(
            r, episode_members[uid[i]], alone=(r / (1 + eps) if norm == "std" else r) * (singleton == "raw")
        )
        a_s = normalized(to_go[i], step_members[(uid[i], anchor[i])])
        out.append(a_e + omega * a_s)
    return torch.tensor(out)


def verl_agent_gigpo(
    env_rewards,
    invalid,
    uid,
    traj,
    step,
    anchor_obs,
    gamma=0.95,
    penalty=0.1,
    mode="mean_std_norm",
    w=1.0,
    similarity=False,
    thresh=0.95,
    eps=1e-6,
):
    """verl-agent's GiGPO pipeline, transcribed in our own words as per-row Python loops over lists
    (gigpo/core_gigpo.py + verl/trainer/ppo/ray_trainer.py of xlan156/verl-agent, which carries upstream's files):

    1. `compute_step_discounted_returns`: each trajectory's discounted return-to-go over the env rewards
       (the reference walks a trajectory's rows in batch order; here in step order, which it assumes);
    2. the reward manager puts the episode's total env reward on every row as its score;
    3. `apply_invalid_action_penalty`: an invalid row loses `penalty` from its score and its step return;
    4. `episode_norm_reward` (compute_mean_std_cross_steps=True): every row of a uid is a member; a group of
       one has mean 0 and std 1; std is torch.std (unbiased); mean_norm drops the division;
    5. `build_step_group`: rows of a uid with equal anchors (or, with similarity, greedy clusters against
       each cluster's first text, difflib ratio >= thresh) share a step group;
    6. `step_norm_reward`: the same normalization in step groups, a group of one has mean = itself, std 1;
    7. the advantage is episode + w * step.
    """
    n = len(env_rewards)
    score = [0.0] * n
    step_return = [0.0] * n
    for t in set(traj):
        rows = sorted((i for i in range(n) if traj[i] == t), key=lambda i: step[i])
        total, running = sum(env_rewards[i] for i in rows), 0.0
        for i in reversed(rows):
            running = env_rewards[i] + gamma * running
            step_return[i] = running
        for i in rows:
            score[i] = total
    for i in range(n):
        if invalid[i]:
            score[i] -= penalty
            step_return[i] -= penalty

    def norm_by(values, key, alone_mean):
        members = defaultdict(list)
        for i in range(n):
            members[key[i]].append(values[i])
        out = []
        for i in range(n):
            m = members[key[i]]
            if len(m) == 1:
                mean, std = (0.0 if alone_mean == "zero" else m[0]), 1.0
            else:
                mean = sum(m) / len(m)
                std = math.sqrt(sum((x - mean) ** 2 for x in m) / (len(m) - 1))
            out.append(values[i] - mean if mode == "mean_norm" else (values[i] - mean) / (std + eps))
        return out

    episode = norm_by(score, uid, alone_mean="zero")
    cluster = [None] * n
    for u in sorted(set(uid)):
        reps = []  # (first text, cluster key) in founding order
        for i in (i for i in range(n) if uid[i] == u):
            for text, key in reps:
                if (
                    (difflib.SequenceMatcher(None, anchor_obs[i], text).ratio() >= thresh)
                    if similarity
                    else (anchor_obs[i] == text)
                ):
                    cluster[i] = key
                    break
            else:
                cluster[i] = (u, len(reps))
                reps.append((anchor_obs[i], cluster[i]))
    step_adv = norm_by(step_return, cluster, alone_mean="self")
    return torch.tensor([e + w * a for e, a in zip(episode, step_adv, strict=True)])


def random_batch(seed, groups=6, max_trajs=5, max_len=8, states=4, discrete=False):
    """Rows of `groups` groups, 1..max_trajs trajectories each of 1..max_len steps, anchors drawn from a
    few states per group (so states repeat across and within trajectories), rows shuffled.
    Returns lists (rewards, uid, traj, step, anchor)."""
    rng = random.Random(seed)
    rows = []
    traj_id = 0
    for g in range(groups):
        u = 100 + 7 * g  # arbitrary, non-dense ids
        for _ in range(rng.randint(1, max_trajs)):
            traj_id += 1
            for s in range(rng.randint(1, max_len)):
                if discrete:  # ALFWorld-like: invalid-action penalties and a sparse success reward
                    r = rng.choice([0.0, 0.0, 0.0, -0.1, 1.0])
                else:
                    r = rng.gauss(0, 1)
                a = rng.randrange(states) + 50 * (g % 2)  # ids reused across groups on purpose
                rows.append((r, u, 3 * traj_id + 11, s, a))
    rng.shuffle(rows)
    return [list(col) for col in zip(*rows, strict=True)]


def as_tensors(rewards, uid, traj, step, anchor):
    return torch.tensor(rewards), torch.tensor(uid), torch.tensor(traj), torch.tensor(step), torch.tensor(anchor)


@pytest.mark.parametrize("episode_stats", ["trajectory", "step_rows"])
@pytest.mark.parametrize("norm", ["std", "mean"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_loop_reference(seed, norm, episode_stats):
    cols = random_batch(seed, discrete=seed % 2 == 1)
    gamma, omega = (0.95, 1.0) if seed < 2 else (0.8, 0.5)
    kw = dict(gamma=gamma, omega=omega, norm=norm, episode_stats=episode_stats, singleton=("raw", "zero")[seed % 2])
    adv = gigpo_advantages(*as_tensors(*cols), **kw)
    expected = reference_gigpo(*cols, **kw)
    assert adv.shape == (len(cols[0]),)
    assert torch.allclose(adv, expected, atol=1e-4, rtol=1e-4)


def random_agent_batch(seed, groups=5, max_trajs=6, max_len=7, states=3):
    """ALFWorld-like rows: sparse env rewards, invalid actions, text anchors from a few states (repeating
    across and within trajectories); one uid's rows are contiguous, steps in order (as verl-agent's batch).
    Returns lists (env_rewards, invalid, uid, traj, step, anchor_text)."""
    rng = random.Random(seed)
    rows, traj_id = [], 0
    for g in range(groups):
        for _ in range(rng.randint(1, max_trajs)):
            traj_id += 1
            length = rng.randint(1, max_len)
            for s in range(length):
                r = 10.0 if s == length - 1 and rng.random() < 0.3 else 0.0
                text = f"room {g} state {rng.randrange(states)}" + " seen" * rng.randrange(2)
                rows.append((r, rng.random() < 0.3, 40 + g, traj_id, s, text))
    return [list(col) for col in zip(*rows, strict=True)]


@pytest.mark.parametrize("mode", ["mean_std_norm", "mean_norm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_verl_agent_with_invalid_action_penalty(seed, mode):
    rewards, invalid, uid, traj, step, texts = random_agent_batch(seed)
    expected = verl_agent_gigpo(rewards, invalid, uid, traj, step, texts, mode=mode)
    anchor_ids = {t: k for k, t in enumerate(dict.fromkeys(texts))}
    adv = gigpo_advantages(
        torch.tensor(rewards),
        torch.tensor(uid),
        torch.tensor(traj),
        torch.tensor(step),
        torch.tensor([anchor_ids[t] for t in texts]),
        penalty=0.1 * torch.tensor(invalid, dtype=torch.float32),
        norm="std" if mode == "mean_std_norm" else "mean",
    )
    assert torch.allclose(adv, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("seed", [3, 4])
def test_similarity_mode_matches_verl_agent(seed):
    rewards, invalid, uid, traj, step, texts = random_agent_batch(seed, states=4)
    # observations of which difflib's 0.95 merges some (the two countertop views) and not others (33 distinct
    # (uid, text) pairs form 21 and 23 clusters for these seeds)
    states = [KITCHEN, KITCHEN_TAKEN, FRIDGE, FRIDGE.replace("closed", "open")]
    texts = [states[int(t.split()[3])] + (" Nothing happens." if t.endswith("seen") else "") for t in texts]
    expected = verl_agent_gigpo(rewards, invalid, uid, traj, step, texts, similarity=True, thresh=0.95)
    trajs: dict[int, Trajectory] = {}
    for r, bad, u, t, _, text in zip(rewards, invalid, uid, traj, step, texts, strict=True):
        trajs.setdefault(t, Trajectory(uid=u, seed=u, task="t")).steps.append(_step(r, text, bad))
    batch = build_batch(list(trajs.values()), pad_token_id=0)
    adv = ALGOS.get("gigpo")(batch, _cfg(anchor="similarity"))
    assert torch.allclose(adv.sum(1) / batch.response_mask.sum(1), expected, atol=1e-4, rtol=1e-5)


def test_invalid_action_in_the_middle_costs_only_its_own_row():
    # uid 0: trajectory A visits (a, b, c), its middle action is invalid, and it succeeds (reward 1 at the
    # end); trajectory B visits (a, b) and fails. Penalty 0.1, gamma 0.95, norm="mean", the defaults else.
    # Scores (step rows): A (1, 0.9, 1), B (0, 0): mean 0.58 -> A^E = A (0.42, 0.32, 0.42), B (-0.58, -0.58).
    # Step returns of env rewards: A (0.9025, 0.95, 1) -> the invalid row alone: 0.95 - 0.1 = 0.85; B (0, 0).
    # Step groups: a {0.9025, 0} -> +-0.45125; b {0.85, 0} -> +-0.425; c alone -> 0.
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    uid = torch.zeros(5, dtype=torch.long)
    traj = torch.tensor([0, 0, 0, 1, 1])
    step = torch.tensor([0, 1, 2, 0, 1])
    anchor = torch.tensor([0, 1, 2, 0, 1])
    penalty = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.0])
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, penalty=penalty, norm="mean")
    expected = [0.42 + 0.45125, 0.32 + 0.425, 0.42, -0.58 - 0.45125, -0.58 - 0.425]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)
    # Folding it into the reward instead (the old rule) discounts it into A's first step and lowers every
    # A row's score: a different method, kept as penalty_rule=folded.
    folded = gigpo_advantages(rewards - penalty, uid, traj, step, anchor, norm="mean")
    assert not torch.allclose(folded, adv, atol=1e-3)


def test_hand_computed_revisits_groups_of_one_and_uid_separation():
    # uid 0: traj 0 anchors (a, b, a) rewards (0, 0, 1); traj 1 anchors (a, c) rewards (0, 0).
    # uid 1: traj 2 anchors (a, a) rewards (1, 0) -- a revisit inside the group's only trajectory;
    #        anchor id a is shared with uid 0 but step groups never cross groups.
    a, b, c = 0, 1, 2
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    uid = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    traj = torch.tensor([0, 0, 0, 1, 1, 2, 2])
    step = torch.tensor([0, 1, 2, 0, 1, 0, 1])
    anchor = torch.tensor([a, b, a, a, c, a, a])
    # Episode level, uid 0: R = (1, 0) -> A^E = +-1/sqrt(2). uid 1 has one trajectory -> A^E = 0.
    # Returns-to-go (gamma 0.95): traj 0: (0.95^2, 0.95, 1) = (0.9025, 0.95, 1); traj 1: (0, 0); traj 2: (1, 0).
    # Step group (0, a) = {0.9025, 1, 0}: mean 1.9025/3 = 0.634167, deviations (0.268333, 0.365833, -0.634167),
    #   unbiased var (0.0720028 + 0.1338340 + 0.4021674)/2 = 0.3040021, std 0.5513638
    #   -> A^S = (0.4866720, 0.6635062, -1.1501782). (0, b) and (0, c) are singletons -> 0.
    # Step group (1, a) = {1, 0}: A^S = +-1/sqrt(2).
    paper = dict(episode_stats="trajectory", singleton="zero")
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, eps=0.0, **paper)
    expected = [R2 + 0.4866720, R2, R2 + 0.6635062, -R2 - 1.1501782, -R2, R2, -R2]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)

    # norm="mean": A^E = +-0.5 (uid 0), A^S = the deviations above; omega scales A^S only.
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, norm="mean", omega=2.0, **paper)
    expected = [0.5 + 2 * 0.2683333, 0.5, 0.5 + 2 * 0.3658333, -0.5 - 2 * 0.6341667, -0.5, 1.0, -1.0]
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-6)

    # omega = 0 -> A^E only.
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, omega=0.0, eps=0.0, **paper)
    assert torch.allclose(adv, torch.tensor([R2, R2, R2, -R2, -R2, 0.0, 0.0]), atol=1e-6)

    # The defaults (verl-agent): step-row members and a raw score for a group of one. uid 0 members
    # (1, 1, 1, 0, 0): mean 0.6, unbiased std sqrt(0.3) -> (1 - 0.6)/0.5477226 = 0.7302967, -1.0954451;
    # uid 1's two rows are one trajectory: members (1, 1), equal -> 0 (one-member groups only get the raw score).
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, omega=0.0, eps=0.0)
    assert torch.allclose(adv, torch.tensor([0.7302967] * 3 + [-1.0954451] * 2 + [0.0, 0.0]), atol=1e-6)
    single = gigpo_advantages(rewards[5:6], uid[5:6], traj[5:6], step[5:6], anchor[5:6], omega=0.0)
    assert torch.allclose(single, torch.tensor([1.0 / (1 + 1e-6)]))  # mean 0, std 1: the raw score


def test_std_norm_is_mean_norm_divided_by_step_group_std():
    # One step group {3, 1, 2} (three one-step trajectories, shared anchor): mean 2, deviations (1, -1, 0),
    # unbiased std 1 -> std and mean norms agree at eps=0; with eps=1 the std form halves them.
    cols = (
        torch.tensor([3.0, 1.0, 2.0]),
        torch.zeros(3, dtype=torch.long),
        torch.arange(3),
        torch.zeros(3, dtype=torch.long),
        torch.zeros(3, dtype=torch.long),
    )
    a_s = gigpo_advantages(*cols, omega=1.0) - gigpo_advantages(*cols, omega=0.0)
    assert torch.allclose(a_s, torch.tensor([1.0, -1.0, 0.0]), atol=1e-5)
    assert torch.allclose(gigpo_advantages(*cols, norm="mean", omega=0.0), torch.tensor([1.0, -1.0, 0.0]))
    assert torch.allclose(gigpo_advantages(*cols, eps=1.0, omega=0.0), torch.tensor([0.5, -0.5, 0.0]))


@pytest.mark.parametrize("gamma, expected_gap", [(0.95, 0.95 - 0.9025), (1.0, 0.0)])
def test_gamma_separates_early_from_late_reward(gamma, expected_gap):
    # Both trajectories succeed (R = 1 each -> A^E = 0) and share the start state s; they differ only in
    # when the reward comes: A gets it at step 1, B at step 2, so G at s is gamma for A and gamma^2 for B.
    # norm="mean": A^S(s) = +-(gamma - gamma^2)/2 = +-0.02375 for gamma 0.95; gamma = 1 -> equal G -> 0.
    s, t, u, v = 0, 1, 2, 3
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0])
    uid = torch.zeros(5, dtype=torch.long)
    traj = torch.tensor([0, 0, 1, 1, 1])
    step = torch.tensor([0, 1, 0, 1, 2])
    anchor = torch.tensor([s, t, s, u, v])
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, gamma=gamma, norm="mean")
    half = expected_gap / 2
    assert torch.allclose(adv, torch.tensor([half, 0.0, -half, 0.0, 0.0]), atol=1e-7)
    # norm="std": a group of two with different values gives +-1/sqrt(2) (up to eps); equal values exactly 0.
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, gamma=gamma)
    sign = 1.0 if expected_gap else 0.0
    assert torch.allclose(adv, torch.tensor([sign * R2, 0.0, -sign * R2, 0.0, 0.0]), atol=1e-4)


def test_episode_stats_trajectory_vs_step_rows_uneven_lengths():
    # A long failure (3 steps, R = 0) and a short success (1 step, R = 1), all anchors distinct (A^S = 0).
    # trajectory: members (0, 1) -> +-1/sqrt(2).
    # step_rows: members (0, 0, 0, 1): mean 0.25, unbiased var (3 * 0.0625 + 0.5625)/3 = 0.25, std 0.5
    #   -> long rows (0 - 0.25)/0.5 = -0.5, short row (1 - 0.25)/0.5 = 1.5.
    cols = (
        torch.tensor([0.0, 0.0, 0.0, 1.0]),
        torch.zeros(4, dtype=torch.long),
        torch.tensor([0, 0, 0, 1]),
        torch.tensor([0, 1, 2, 0]),
        torch.arange(4),
    )
    adv = gigpo_advantages(*cols, eps=0.0, episode_stats="trajectory")
    assert torch.allclose(adv, torch.tensor([-R2, -R2, -R2, R2]), atol=1e-6)
    adv = gigpo_advantages(*cols, eps=0.0, episode_stats="step_rows")
    assert torch.allclose(adv, torch.tensor([-0.5, -0.5, -0.5, 1.5]), atol=1e-6)


def test_equal_returns_give_exact_zero():
    # 7 trajectories with the same rewards: every group has equal members, so every advantage is exactly 0
    # (no float32 residue of the mean amplified by 1/eps).
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0] * 7) * 0.857375
    traj = torch.arange(28) // 4
    step = torch.arange(28) % 4
    for stats in ("trajectory", "step_rows"):
        adv = gigpo_advantages(rewards, torch.zeros(28, dtype=torch.long), traj, step, step, episode_stats=stats)
        assert torch.equal(adv, torch.zeros(28))


@pytest.mark.parametrize("norm", ["std", "mean"])
def test_no_repeated_anchors_is_grpo(norm):
    rewards, uid, traj, step, _ = as_tensors(*random_batch(5))
    anchor = torch.arange(rewards.numel())  # every (uid, anchor) unique -> all step groups are singletons
    adv = gigpo_advantages(rewards, uid, traj, step, anchor, norm=norm, episode_stats="trajectory", singleton="zero")
    unique_traj, inverse = torch.unique(traj, return_inverse=True)
    returns = torch.zeros(unique_traj.numel()).index_add_(0, inverse, rewards)
    traj_uid = torch.zeros(unique_traj.numel(), dtype=torch.long).scatter_(0, inverse, uid)
    expected = grpo_advantages(returns, traj_uid, norm=norm)[inverse]
    assert torch.allclose(adv, expected, atol=1e-5)


@pytest.mark.parametrize("episode_stats", ["trajectory", "step_rows"])
def test_one_step_trajectories_sharing_an_anchor_double_grpo(episode_stats):
    # One step per trajectory, one anchor per group: G = r = R, step groups = episode groups -> A^S = GRPO.
    g = torch.Generator().manual_seed(3)
    n = 24
    rewards = torch.randn(n, generator=g)
    uid = torch.randint(0, 4, (n,), generator=g)
    grpo = grpo_advantages(rewards, uid)
    zeros = torch.zeros(n, dtype=torch.long)
    kw = dict(episode_stats=episode_stats, singleton="zero")
    a_s = gigpo_advantages(rewards, uid, torch.arange(n), zeros, zeros + 9, omega=1.0, **kw)
    a_e = gigpo_advantages(rewards, uid, torch.arange(n), zeros, zeros + 9, omega=0.0, **kw)
    assert torch.allclose(a_s - a_e, grpo, atol=1e-5)
    assert torch.allclose(a_s, 2 * grpo, atol=1e-5)


@pytest.mark.parametrize("episode_stats", ["trajectory", "step_rows"])
def test_permutation_equivariant(episode_stats):
    cols = as_tensors(*random_batch(7))
    perm = torch.randperm(cols[0].numel(), generator=torch.Generator().manual_seed(0))
    adv = gigpo_advantages(*cols, episode_stats=episode_stats)
    adv_perm = gigpo_advantages(*(c[perm] for c in cols), episode_stats=episode_stats)
    assert torch.allclose(adv[perm], adv_perm, atol=1e-5)


def test_rejects_bad_modes_and_handles_empty():
    cols = as_tensors([1.0], [0], [0], [0], [0])
    with pytest.raises(ValueError, match="episode_stats"):
        gigpo_advantages(*cols, episode_stats="steps")
    with pytest.raises(ValueError, match="norm"):
        gigpo_advantages(*cols, norm="max")
    empty = torch.zeros(0, dtype=torch.long)
    assert gigpo_advantages(torch.zeros(0), empty, empty, empty, empty).shape == (0,)
    assert similarity_anchor_ids([], empty).shape == (0,)


# ------------------------------------------------------------------------------------------ similarity
KITCHEN = "You arrive at countertop 1. On the countertop 1, you see a apple 2, a bread 1, a butterknife 3, a knife 1, and a peppershaker 2."
KITCHEN_TAKEN = "You arrive at countertop 1. On the countertop 1, you see a bread 1, a butterknife 3, a knife 1, and a peppershaker 2."
FRIDGE = "You arrive at fridge 1. The fridge 1 is closed."


def test_similar_texts_merge_and_different_ones_do_not():
    assert fuzz.ratio(KITCHEN, KITCHEN_TAKEN) >= 90 > fuzz.ratio(KITCHEN, FRIDGE)
    texts = [KITCHEN, FRIDGE, KITCHEN_TAKEN, FRIDGE, KITCHEN]
    ids = similarity_anchor_ids(texts, torch.zeros(5, dtype=torch.long), 0.9, "indel")
    assert ids.tolist() == [0, 1, 0, 1, 0]
    assert ids.dtype == torch.int64


def test_clusters_never_cross_groups_and_ids_are_global():
    texts = [KITCHEN, KITCHEN, KITCHEN_TAKEN, FRIDGE, KITCHEN_TAKEN]
    ids = similarity_anchor_ids(texts, torch.tensor([4, 9, 4, 9, 9]), 0.9, "indel")
    # uid 4: {KITCHEN, KITCHEN_TAKEN} -> one cluster (id 0); uid 9: KITCHEN + KITCHEN_TAKEN (1), FRIDGE (2).
    assert ids.tolist() == [0, 1, 0, 2, 1]


def test_identical_texts_always_merge():
    # threshold 1.0: only identical texts merge; a threshold above 1 still merges identical texts.
    texts = [KITCHEN, KITCHEN_TAKEN, KITCHEN, KITCHEN_TAKEN]
    uid = torch.zeros(4, dtype=torch.long)
    for scorer in ("difflib", "indel"):
        assert similarity_anchor_ids(texts, uid, threshold=1.0, scorer=scorer).tolist() == [0, 1, 0, 1]
        assert similarity_anchor_ids(texts, uid, threshold=1.5, scorer=scorer).tolist() == [0, 1, 0, 1]


def test_greedy_compares_with_the_cluster_representative_only():
    a, b, c = "a" * 40, "a" * 36 + "b" * 4, "a" * 32 + "b" * 8
    # Indel ratios: (a, b) = (b, c) = 1 - 8/80 = 0.9 (at the threshold: joins), (a, c) = 1 - 16/80 = 0.8.
    assert fuzz.ratio(a, b) == fuzz.ratio(b, c) == 90.0 and fuzz.ratio(a, c) == 80.0
    uid = torch.zeros(3, dtype=torch.long)
    # b joins a's cluster; c is similar to b but is compared with the representative a only -> new cluster.
    assert similarity_anchor_ids([a, b, c], uid, 0.9, "indel").tolist() == [0, 0, 1]
    # first-appearance order decides the representatives.
    assert similarity_anchor_ids([c, b, a], uid, 0.9, "indel").tolist() == [0, 0, 1]
    assert similarity_anchor_ids([b, a, c], uid, 0.9, "indel").tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------ registered algo
def _step(reward, anchor, invalid=False, response_len=2):
    return Step(
        prompt_ids=[1, 1],
        response_ids=[2] * response_len,
        logprobs=[-0.5] * response_len,
        response_text="x",
        action=None if invalid else "x",
        reward=reward,
        anchor=anchor,
        invalid=invalid,
        penalty=0.1 if invalid else 0.0,
    )


def _traj(uid, rewards, anchors, response_len=2, invalid=()):
    steps = [_step(r, a, k in invalid, response_len) for k, (r, a) in enumerate(zip(rewards, anchors, strict=True))]
    return Trajectory(uid=uid, seed=uid, task="t", steps=steps)


def _cfg(**overrides):
    return OmegaConf.merge(OmegaConf.structured(GiGPOConfig), {"name": "gigpo", **overrides})


def test_registered_algo_tokens_and_reference():
    trajs = [
        _traj(0, [0.0, 0.0, 1.0], [KITCHEN, FRIDGE, KITCHEN]),
        _traj(0, [0.0, 0.0], [KITCHEN, "You open the fridge 1."], response_len=3, invalid=(1,)),
        _traj(1, [1.0, 0.0], [FRIDGE, FRIDGE]),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    assert batch.penalty.tolist() == pytest.approx([0, 0, 0, 0, 0.1, 0, 0])  # apart from the env's rewards
    cols = [batch.uid.tolist(), batch.traj.tolist(), batch.step.tolist(), batch.anchor_text]
    # the default rule (row): verl-agent's computation
    adv = ALGOS.get("gigpo")(apply_penalty_rule(batch, "row"), _cfg())
    assert adv.shape == batch.input_ids.shape
    assert torch.all(adv[batch.response_mask == 0] == 0)  # prompt and padding carry no credit
    per_row = adv.sum(1) / batch.response_mask.sum(1)
    expected = verl_agent_gigpo(batch.rewards.tolist(), batch.invalid.tolist(), *cols)
    assert torch.allclose(per_row, expected, atol=1e-5)
    assert torch.allclose(adv, per_row[:, None] * batch.response_mask)  # every response token carries it
    # folded: the paper's equations on rewards that carry the penalty
    folded = apply_penalty_rule(batch, "folded")
    assert folded.rewards.tolist()[4] == pytest.approx(-0.1) and not folded.penalty.any()
    adv = ALGOS.get("gigpo")(folded, _cfg(penalty_rule="folded", episode_stats="trajectory", singleton="zero"))
    rows = [
        folded.rewards.tolist(),
        batch.uid.tolist(),
        batch.traj.tolist(),
        batch.step.tolist(),
        batch.anchor.tolist(),
    ]
    assert torch.allclose(adv.sum(1) / batch.response_mask.sum(1), reference_gigpo(*rows), atol=1e-5)


def test_similarity_scorers_differ_where_difflib_is_asymmetric():
    # difflib's ratio depends on the argument order; verl-agent asks ratio(new text, representative).
    short, long = "baabb", "bbabbbaaa"
    assert difflib.SequenceMatcher(None, short, long).ratio() < 0.5 < difflib.SequenceMatcher(None, long, short).ratio()
    assert fuzz.ratio(short, long) / 100 > 0.5
    uid = torch.zeros(2, dtype=torch.long)
    assert similarity_anchor_ids([long, short], uid, 0.5, "difflib").tolist() == [0, 1]  # ratio(short, long)
    assert similarity_anchor_ids([short, long], uid, 0.5, "difflib").tolist() == [0, 0]  # ratio(long, short)
    assert similarity_anchor_ids([long, short], uid, 0.5, "indel").tolist() == [0, 0]
    with pytest.raises(ValueError, match="scorer"):
        similarity_anchor_ids([long], uid[:1], 0.5, "jaccard")


def test_registered_similarity_equals_exact_when_texts_identical_or_very_different():
    trajs = [
        _traj(0, [0.0, 0.0, 1.0], [KITCHEN, FRIDGE, KITCHEN]),
        _traj(0, [0.0, 0.0], [KITCHEN, "You open the fridge 1. In it, you see nothing."]),
        _traj(1, [1.0, 0.0], [FRIDGE, FRIDGE]),
        _traj(1, [0.5, 0.0, 0.2], [KITCHEN, FRIDGE, "Nothing happens."]),
    ]
    batch = build_batch(trajs, pad_token_id=0)
    exact = ALGOS.get("gigpo")(batch, _cfg(anchor="exact"))
    similar = ALGOS.get("gigpo")(batch, _cfg(anchor="similarity"))
    assert torch.equal(exact, similar)
    # and similarity mode does merge near-identical anchors that exact mode keeps apart
    trajs[1] = _traj(0, [0.0, 0.0], [KITCHEN_TAKEN, FRIDGE])
    batch = build_batch(trajs, pad_token_id=0)
    assert not torch.allclose(
        ALGOS.get("gigpo")(batch, _cfg(anchor="exact")), ALGOS.get("gigpo")(batch, _cfg(anchor="similarity"))
    )


def test_config_file_composes_and_validates():
    from hydra import compose, initialize_config_dir

    from calmrl.cli import CONFIG_DIR
    from calmrl.config import validate

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["run_name=t", "algo=gigpo"])
    validate(cfg)
    assert cfg.algo.name == "gigpo" and str(cfg.algo.anchor) == "exact" and cfg.algo.gamma == 0.95
    assert (cfg.algo.omega, cfg.algo.similarity_threshold, str(cfg.algo.episode_stats)) == (1.0, 0.95, "step_rows")
    assert (str(cfg.algo.penalty_rule), str(cfg.algo.singleton), str(cfg.algo.similarity)) == ("row", "raw", "difflib")
