"""How fast is the vectorized GiGPO advantage, against per-row loops like the public reference code?

Table 1, exact anchors: `gigpo_advantages` (torch, segment reductions) at 4k, 16k and 64k step rows
vs two loop implementations of the same computation (outputs checked with allclose):
  - ref-style: structured like the public reference code (verl-agent gigpo/core_gigpo.py): numpy masks
    per trajectory/group, a per-row position lookup, dicts of per-row tensor scores keyed by group and by
    (group, anchor), per-group torch mean/std, per-row tensor writes;
  - lean loop: the same loops over plain Python lists and dicts (a stronger baseline).
Goal: >= 50x at 16k rows against ref-style.

Table 2, similarity anchors at 2k rows: `similarity_anchor_ids(scorer="indel")` (rapidfuzz cdist + greedy pass
over the distinct texts) vs greedy clustering with difflib.SequenceMatcher ratio >= 0.9 (same rule), once per
row as the reference code does and once over the distinct texts only. Goal: >= 10x. The default
`scorer="difflib"` (the reference's metric, distinct texts only) is timed too, and its partition must equal
the per-row reference loop's.

Data: groups of 8 trajectories of 3..50 steps; anchors repeat within a group (every trajectory starts
in the same state, and states are revisited); ALFWorld-like rewards (-0.1 invalid action, +10 success).

    python benchmarks/gigpo_speed.py
"""

from __future__ import annotations

import difflib
import math
import random
import statistics
import time
from collections import defaultdict

import numpy as np
import torch

from calmrl.algos.gigpo import gigpo_advantages, similarity_anchor_ids

GROUP_SIZE = 8
MAX_STEPS = 50
GAMMA, OMEGA, EPS = 0.95, 1.0, 1e-6


# ------------------------------------------------------------------------------------------ data
def make_rows(target_rows: int, seed: int = 0):
    """Whole groups of GROUP_SIZE trajectories until at least `target_rows` step rows."""
    rng = random.Random(seed)
    rewards, uid, traj, step, anchor = [], [], [], [], []
    group = t = 0
    while len(rewards) < target_rows:
        common = rng.randint(5, 15)  # states most trajectories pass through
        for _ in range(GROUP_SIZE):
            length = rng.randint(3, MAX_STEPS)
            success = length < MAX_STEPS and rng.random() < 0.6
            for s in range(length):
                if s == 0:
                    a = 0  # the task's initial observation
                elif rng.random() < 0.6:
                    a = rng.randint(1, common)
                else:
                    a = rng.randint(common + 1, common + 300)
                r = -0.1 if rng.random() < 0.1 else 0.0
                if success and s == length - 1:
                    r += 10.0
                rewards.append(r)
                uid.append(group)
                traj.append(t)
                step.append(s)
                anchor.append(a)
            t += 1
        group += 1
    return (
        torch.tensor(rewards),
        torch.tensor(uid),
        torch.tensor(traj),
        torch.tensor(step),
        torch.tensor(anchor),
    )


RECEPTACLES = ["countertop", "cabinet", "drawer", "shelf", "fridge", "microwave", "sinkbasin", "stoveburner",
               "diningtable", "garbagecan", "coffeemachine", "toaster"]  # fmt: skip
ITEMS = ["apple", "bread", "butterknife", "cup", "dishsponge", "egg", "fork", "kettle", "knife", "lettuce", "mug",
         "pan", "peppershaker", "plate", "pot", "potato", "saltshaker", "soapbottle", "spatula", "spoon", "tomato"]  # fmt: skip


def _listing(items: list[str]) -> str:
    return ", ".join(f"a {x}" for x in items[:-1]) + f", and a {items[-1]}"


def make_texts(target_rows: int, seed: int = 0):
    """ALFWorld-like anchor observations (~100-300 chars): receptacles whose contents vary slightly
    between visits (an item taken or put back), so near-identical texts are common."""
    rng = random.Random(seed)
    texts, uid = [], []
    group = 0
    while len(texts) < target_rows:
        places = {}
        for _ in range(14):
            name = f"{rng.choice(RECEPTACLES)} {rng.randint(1, 6)}"
            places[name] = [f"{x} {rng.randint(1, 3)}" for x in rng.sample(ITEMS, rng.randint(5, 12))]
        names = list(places)
        start = f"You are in the middle of a room. Looking quickly around you, you see {_listing(names)}."
        for _ in range(GROUP_SIZE):
            for s in range(rng.randint(3, MAX_STEPS)):
                if s == 0:
                    texts.append(start)
                else:
                    place = rng.choice(names[: rng.choice([4, 14])])  # a few places are visited often
                    items = list(places[place])
                    if rng.random() < 0.3:
                        items.pop(rng.randrange(len(items)))  # an item was taken
                    if rng.random() < 0.1:
                        items.append(f"{rng.choice(ITEMS)} {rng.randint(1, 3)}")  # an item was put
                    if rng.random() < 0.5:
                        texts.append(f"You arrive at {place}. On the {place}, you see {_listing(items)}.")
                    else:
                        texts.append(f"You open the {place}. The {place} is open. In it, you see {_listing(items)}.")
                uid.append(group)
        group += 1
    return texts, torch.tensor(uid)


# ------------------------------------------------------------------------------------------ baselines
def reference_style_gigpo(rewards, uid, traj, step, anchor, gamma=GAMMA, omega=OMEGA, eps=EPS):
    """Loops structured like the public reference code (see the module docstring). Computes the spec's
    quantities (norm=std, one episode member per trajectory, groups of one get 0), in float64 so that
    ties stay exact."""
    rewards_np, uid_np, traj_np, step_np, anchor_np = (x.numpy() for x in (rewards, uid, traj, step, anchor))
    n = len(rewards_np)
    returns_by_traj = {}  # discounted returns, one trajectory at a time
    for t in np.unique(traj_np):
        rows = np.where(traj_np == t)[0]
        rows = rows[np.argsort(step_np[rows])]
        out = np.zeros(len(rows))
        running = 0.0
        for k in reversed(range(len(rows))):
            running = rewards_np[rows[k]] + gamma * running
            out[k] = running
        returns_by_traj[t] = (rows, out)
    to_go = np.zeros(n)
    for i in range(n):  # back to batch order, row by row
        rows, out = returns_by_traj[traj_np[i]]
        to_go[i] = out[np.where(rows == i)[0][0]]
    episode_return = {t: float(rewards_np[rows].astype(np.float64).sum()) for t, (rows, _) in returns_by_traj.items()}

    def normalize(scores, keys, member_once=None):
        id2score = defaultdict(list)
        seen = set()
        for i in range(n):
            if member_once is not None:
                if member_once[i] in seen:
                    continue
                seen.add(member_once[i])
            id2score[keys[i]].append(scores[i])
        id2mean, id2std = {}, {}
        for key, members in id2score.items():
            x = torch.tensor(members, dtype=torch.float64)
            id2mean[key] = torch.mean(x)
            id2std[key] = torch.std(x) if len(members) > 1 else None
        out = scores.clone()
        for i in range(n):
            std = id2std[keys[i]]
            out[i] = 0.0 if std is None else (scores[i] - id2mean[keys[i]]) / (std + eps)
        return out

    episode = normalize(torch.tensor([episode_return[t] for t in traj_np]), uid_np, member_once=traj_np)
    step_group = np.empty(n, dtype=np.int64)  # per group, a dict anchor -> rows; one id per (group, anchor)
    next_id = 0
    for u in np.unique(uid_np):
        clusters = defaultdict(list)
        for i in np.where(uid_np == u)[0]:
            clusters[anchor_np[i]].append(i)
        for members in clusters.values():
            step_group[members] = next_id
            next_id += 1
    step_level = normalize(torch.tensor(to_go), step_group)
    return (episode + omega * step_level).float()


def loop_gigpo(rewards, uid, traj, step, anchor, gamma=GAMMA, omega=OMEGA, eps=EPS):
    """The same loops over plain Python lists and dicts, no per-element tensor ops (norm=std)."""
    rewards, uid, traj, step, anchor = (x.tolist() for x in (rewards, uid, traj, step, anchor))
    n = len(rewards)
    rows_of = defaultdict(list)  # trajectory -> its rows
    for i in range(n):
        rows_of[traj[i]].append(i)
    to_go = [0.0] * n
    episode_return = {}
    for t, rows in rows_of.items():
        rows.sort(key=lambda i: step[i])
        running = 0.0
        for i in reversed(rows):
            running = rewards[i] + gamma * running
            to_go[i] = running
        episode_return[t] = sum(rewards[i] for i in rows)

    def stats(groups):
        out = {}
        for key, scores in groups.items():
            mean = sum(scores) / len(scores)
            std = math.sqrt(sum((x - mean) ** 2 for x in scores) / (len(scores) - 1)) if len(scores) > 1 else 0.0
            out[key] = (mean, std, len(scores))
        return out

    id2score = defaultdict(list)
    for t, rows in rows_of.items():
        id2score[uid[rows[0]]].append(episode_return[t])
    step2score = defaultdict(list)
    for i in range(n):
        step2score[(uid[i], anchor[i])].append(to_go[i])
    id2stats, step2stats = stats(id2score), stats(step2score)
    out = [0.0] * n
    for i in range(n):
        mean, std, size = id2stats[uid[i]]
        a_e = (episode_return[traj[i]] - mean) / (std + eps) if size > 1 else 0.0
        mean, std, size = step2stats[(uid[i], anchor[i])]
        a_s = (to_go[i] - mean) / (std + eps) if size > 1 else 0.0
        out[i] = a_e + omega * a_s
    return torch.tensor(out)


def difflib_clusters(texts, uid, threshold=0.9, distinct_only=False):
    """Greedy clustering within each uid group with difflib: each text joins the first cluster whose
    representative has SequenceMatcher ratio >= threshold. Per row (reference code) or per distinct text."""
    uids = uid.tolist()
    rows_of = defaultdict(list)
    for i, u in enumerate(uids):
        rows_of[u].append(i)
    out = [0] * len(texts)
    next_id = 0
    for rows in rows_of.values():
        reps: list[str] = []
        seen: dict[str, int] = {}
        for i in rows:
            if distinct_only and texts[i] in seen:
                out[i] = seen[texts[i]]
                continue
            for k, rep in enumerate(reps):
                if difflib.SequenceMatcher(None, texts[i], rep).ratio() >= threshold:
                    out[i] = next_id + k
                    break
            else:
                out[i] = next_id + len(reps)
                reps.append(texts[i])
            seen[texts[i]] = out[i]
        next_id += len(reps)
    return torch.tensor(out)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.unique(torch.stack([a, b], 1), dim=0).shape[0] == torch.unique(a).numel() == torch.unique(b).numel()


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    torch.set_num_threads(1)
    print(
        f"GiGPO advantages, exact anchors (groups of {GROUP_SIZE} trajectories, 3..{MAX_STEPS} steps, torch threads 1)"
    )
    print("  vectorized: calmrl.algos.gigpo.gigpo_advantages, median of 7 runs")
    print("  ref-style:  loops structured like the public reference code (per-row tensor ops, numpy masks)")
    print("  lean loop:  the same loops over plain Python lists/dicts (stronger baseline)")
    print("  loops: median of 3 runs (1 run at 64k); both checked against the vectorized output with allclose")
    head = f"{'rows':>7} {'step groups':>11} {'vectorized ms':>14} {'ref-style ms':>13} {'speedup':>8}"
    print(f"{head} {'lean loop ms':>13} {'speedup':>8}  goal: >= 50x vs ref-style at 16k")
    for target in (4096, 16384, 65536):
        cols = make_rows(target, seed=target)
        rows = cols[0].numel()
        groups = torch.unique(torch.stack([cols[1], cols[4]], 1), dim=0).shape[0]
        gigpo_advantages(*cols)  # warm-up
        fast, adv = median_time(lambda cols=cols: gigpo_advantages(*cols), 7)
        repeats = 3 if rows < 32768 else 1
        ref_t, ref = median_time(lambda cols=cols: reference_style_gigpo(*cols), repeats)
        lean_t, lean = median_time(lambda cols=cols: loop_gigpo(*cols), repeats)
        for other in (ref, lean):
            assert torch.allclose(adv, other, atol=1e-4, rtol=1e-4), (adv - other).abs().max()
        goal = ("met" if fast * 50 <= ref_t else "MISSED") if target == 16384 else ""
        print(
            f"{rows:>7} {groups:>11} {fast * 1e3:>14.2f} {ref_t * 1e3:>13.1f} {ref_t / fast:>7.1f}x"
            f" {lean_t * 1e3:>13.1f} {lean_t / fast:>7.1f}x  {goal}"
        )

    print()
    texts, uid = make_texts(2048, seed=1)
    lengths = sorted(len(t) for t in texts)
    print(
        f"Similarity anchors (threshold 0.9), {len(texts)} rows, {torch.unique(uid).numel()} groups, "
        f"{len(set(zip(uid.tolist(), texts, strict=True)))} distinct (uid, text), text length {lengths[0]}..{lengths[-1]}"
    )
    fast, ids = median_time(lambda: similarity_anchor_ids(texts, uid, 0.9, "indel"), 5)
    print(f"{'method':<58} {'ms':>9} {'clusters':>9} {'speedup':>8}")
    print(
        f"{'calmrl similarity_anchor_ids indel (rapidfuzz cdist, median 5)':<58} {fast * 1e3:>9.1f} "
        f"{torch.unique(ids).numel():>9}"
    )
    # the default scorer, difflib as the reference: its partition must equal the reference loop's below
    exact_t, exact_ids = median_time(lambda: similarity_anchor_ids(texts, uid, 0.9, "difflib"), 1)
    print(
        f"{'calmrl similarity_anchor_ids difflib (the reference metric), 1 run':<58} {exact_t * 1e3:>9.1f} "
        f"{torch.unique(exact_ids).numel():>9}"
    )
    for name, distinct in (
        ("difflib greedy per row (reference code), 1 run", False),
        ("difflib greedy over distinct texts, 1 run", True),
    ):
        slow, base = median_time(lambda distinct=distinct: difflib_clusters(texts, uid, 0.9, distinct), 1)
        same = "same partition" if same_partition(ids, base) else "partition differs (difflib ratio != Indel ratio)"
        assert same_partition(exact_ids, base), "scorer=difflib must reproduce the reference's clusters"
        goal = "goal >= 10x " + ("met" if fast * 10 <= slow else "MISSED")
        print(f"{name:<58} {slow * 1e3:>9.1f} {torch.unique(base).numel():>9} {slow / fast:>7.0f}x  {goal}; {same}")


if __name__ == "__main__":
    main()
