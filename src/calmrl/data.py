"""The data contract between stages: per-step records from the rollout and the padded tensor batch.

A rollout produces `Trajectory` objects (one per sampled episode); `build_batch` turns a list of them
into a `Batch` with ONE ROW PER STEP (model turn). Every later stage (shapers, credit assignment,
learners) reads and writes only the batch.

Token layout of row n: `input_ids[n] = prompt tokens + response tokens + right padding`. Per-token
tensors are aligned with `input_ids`: `old_logprobs[n, t]` is the sampling log-prob of token t, and it
is nonzero only where `response_mask[n, t] == 1`.

The invalid-action penalty is kept apart from the env's rewards (`Step.penalty`, `Batch.penalty`): how it
enters credit assignment is the method's choice (`apply_penalty_rule`): folded into the step reward, or, as
verl-agent does for its group estimators, subtracted from the offending row's own score and return alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Step:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]  # sampling log-prob of each response token
    response_text: str
    action: str | None  # parsed action, None when the response failed the format check
    reward: float  # the env's reward for this step (0 when the action never reached the env)
    anchor: str  # the env state this step acted from (GiGPO step grouping)
    invalid: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    penalty: float = 0.0  # what the invalid action costs (env.invalid_penalty when invalid), kept apart


@dataclass
class Trajectory:
    uid: int  # group id: trajectories of one task/seed share it
    seed: int
    task: str
    steps: list[Step] = field(default_factory=list)
    success: bool = False
    error: str | None = None  # set when the env crashed; the trajectory ended there
    category: str | None = None  # the env's category of the episode (Observation.category / info["category"])

    @property
    def env_return(self) -> float:
        """Undiscounted sum of the env's step rewards."""
        return float(sum(s.reward for s in self.steps))

    @property
    def episode_return(self) -> float:
        """What the episode earned: the env's rewards minus the invalid-action penalties."""
        return float(sum(s.reward - s.penalty for s in self.steps))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, L] int64
    attention_mask: torch.Tensor  # [N, L] int64
    response_mask: torch.Tensor  # [N, L] float, 1 on response tokens
    old_logprobs: torch.Tensor  # [N, L] float, sampling log-probs on response tokens
    rewards: torch.Tensor  # [N] float, each step's reward (the env's, + shaping; + penalty once folded)
    uid: torch.Tensor  # [N] int64, group of the row's trajectory
    traj: torch.Tensor  # [N] int64, trajectory index (unique across the batch)
    step: torch.Tensor  # [N] int64, position of the step in its trajectory
    anchor: torch.Tensor  # [N] int64, id of the anchor state (equal ids = identical state)
    invalid: torch.Tensor  # [N] bool
    episode_return: torch.Tensor  # [N] float, sum of `rewards` over the row's trajectory (same for all its steps)
    penalty: torch.Tensor | None = None  # [N] float, the row's invalid-action penalty while not folded; else 0
    has_answer: torch.Tensor | None = None  # [N] bool, False where the env had no answer to verify (info["has_answer"])
    anchor_text: list[str] = field(default_factory=list)  # [N] raw anchors, for similarity grouping
    token_rewards: torch.Tensor | None = None  # [N, L] float, dense token rewards from a shaper
    token_reward_mask: torch.Tensor | None = None  # [N, L] bool, tokens a shaper put a reward on (PRM step ends)
    step_bonus: torch.Tensor | None = None  # [N] float, dense step rewards from a shaper (e.g. CALM subgoals)
    env_rewards: torch.Tensor | None = None  # [N] float, the env's step rewards, kept by `fold_shaping`
    ref_logprobs: torch.Tensor | None = None  # [N, L] float, reference-policy log-probs (algos that need them)
    values: torch.Tensor | None = None  # [N, L] float, critic values at rollout time (critic methods)
    advantages: torch.Tensor | None = None  # [N, L] float, filled by the algo
    returns: torch.Tensor | None = None  # [N, L] float, for critic methods
    loss_weights: torch.Tensor | None = None  # [N, L] float, per-token policy-loss weights (rollout.correction=tis)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: torch.Tensor) -> Batch:
        """Rows `index` (a [M] int64 tensor) as a new batch; used for minibatching."""
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                out[name] = value[index]
            elif isinstance(value, list):
                out[name] = [value[i] for i in index.tolist()]
            else:
                out[name] = value
        return Batch(**out)


def build_batch(trajectories: list[Trajectory], pad_token_id: int) -> Batch:
    """Flatten trajectories into one padded row per step (see module docstring for the layout)."""
    rows = [(ti, si, traj, step) for ti, traj in enumerate(trajectories) for si, step in enumerate(traj.steps)]
    if not rows:
        raise ValueError("no steps to train on: every trajectory is empty (did every env crash at reset?)")
    lengths = [len(s.prompt_ids) + len(s.response_ids) for *_, s in rows]
    n, width = len(rows), max(lengths)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width))
    old_logprobs = torch.zeros((n, width))
    for r, (*_, s) in enumerate(rows):
        p, q = len(s.prompt_ids), len(s.response_ids)
        input_ids[r, : p + q] = torch.tensor(s.prompt_ids + s.response_ids)
        attention_mask[r, : p + q] = 1
        response_mask[r, p : p + q] = 1.0
        old_logprobs[r, p : p + q] = torch.tensor(s.logprobs)

    anchor_ids: dict[str, int] = {}
    anchors = torch.tensor([anchor_ids.setdefault(s.anchor, len(anchor_ids)) for *_, s in rows])
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        old_logprobs=old_logprobs,
        rewards=torch.tensor([s.reward for *_, s in rows], dtype=torch.float32),
        penalty=torch.tensor([s.penalty for *_, s in rows], dtype=torch.float32),
        has_answer=torch.tensor([bool(s.info.get("has_answer", True)) for *_, s in rows]),
        uid=torch.tensor([t.uid for _, _, t, _ in rows]),
        traj=torch.tensor([ti for ti, *_ in rows]),
        step=torch.tensor([si for _, si, *_ in rows]),
        anchor=anchors,
        invalid=torch.tensor([s.invalid for *_, s in rows]),
        episode_return=torch.tensor([t.env_return for _, _, t, _ in rows], dtype=torch.float32),
        anchor_text=[s.anchor for *_, s in rows],
    )


def fold_shaping(batch: Batch, keep_token_rewards: bool) -> Batch:
    """Add a shaper's dense rewards to the step rewards that credit assignment reads.

    rewards'[n] = rewards[n] + step_bonus[n] (+ sum_t token_rewards[n, t] unless `keep_token_rewards`), and
    episode_return is recomputed from the new step rewards. The env's own rewards stay in `env_rewards`.
    Methods with token-level returns (PPO/GAE, REINFORCE++) keep `token_rewards` in place instead, so they
    see each dense reward on its own token; folding it too would count it twice.
    """
    if batch.step_bonus is None and (batch.token_rewards is None or keep_token_rewards):
        return batch
    env_rewards = batch.rewards if batch.env_rewards is None else batch.env_rewards
    rewards = batch.rewards.clone()
    if batch.step_bonus is not None:
        rewards = rewards + batch.step_bonus.to(rewards.dtype)
    token_rewards = batch.token_rewards
    if token_rewards is not None and not keep_token_rewards:
        rewards = rewards + (token_rewards * batch.response_mask).sum(dim=1).to(rewards.dtype)
        token_rewards = None
    out = Batch(**vars(batch))
    out.rewards, out.env_rewards, out.token_rewards = rewards, env_rewards, token_rewards
    out.episode_return = trajectory_sums(rewards, batch.traj)
    out.step_bonus = None  # folded: a second call must not add it again
    return out


#: how the invalid-action penalty enters credit assignment (`algo.penalty_rule`)
PENALTY_RULES = ("folded", "row")


def penalty_rule(algo_cfg: Any) -> str:
    """The algo config's `penalty_rule`; methods whose schema has none fold the penalty into the reward."""
    return str(algo_cfg.get("penalty_rule", "folded"))


def apply_penalty_rule(batch: Batch, rule: str) -> Batch:
    """Put the invalid-action penalty where the method's rule says.

    folded: the penalty is part of the offending step's reward, rewards'[n] = rewards[n] - penalty[n], so it
        enters the episode return and, discounted, the returns of every earlier step; `penalty` becomes 0.
    row:    the batch is left as it is: rewards and returns stay the env's, and an estimator that knows the
        rule subtracts `penalty[n]` from row n's own score and return only (verl-agent's
        `apply_invalid_action_penalty`). Estimators read `penalty` either way: after folding it is 0.
    """
    if rule not in PENALTY_RULES:
        raise ValueError(f"penalty rule must be one of {PENALTY_RULES}, got {rule!r}")
    if rule == "row" or batch.penalty is None or not bool(batch.penalty.any()):
        return batch
    out = Batch(**vars(batch))
    out.rewards = batch.rewards - batch.penalty.to(batch.rewards.dtype)
    out.episode_return = trajectory_sums(out.rewards, batch.traj)
    out.penalty = torch.zeros_like(batch.penalty)
    return out


def trajectory_sums(values: torch.Tensor, traj: torch.Tensor) -> torch.Tensor:
    """[N]: the sum of `values` [N] over each row's trajectory (`traj` [N] int64), summed in float64 so the
    order of rows cannot change the float32 result."""
    total = torch.zeros(int(traj.max()) + 1, dtype=torch.float64).index_add_(0, traj, values.double())
    return total[traj].to(values.dtype)
