"""The data contract between stages: per-step records from the rollout and the padded tensor batch.

A rollout produces `Trajectory` objects (one per sampled episode); `build_batch` turns a list of them
into a `Batch` with ONE ROW PER STEP (model turn). Every later stage (shapers, credit assignment,
learners) reads and writes only the batch.

Token layout of row n: `input_ids[n] = prompt tokens + response tokens + right padding`. Per-token
tensors are aligned with `input_ids`: `old_logprobs[n, t]` is the sampling log-prob of token t, and it
is nonzero only where `response_mask[n, t] == 1`.
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
    reward: float  # env reward plus the invalid-action penalty
    anchor: str  # the env state this step acted from (GiGPO step grouping)
    invalid: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    uid: int  # group id: trajectories of one task/seed share it
    seed: int
    task: str
    steps: list[Step] = field(default_factory=list)
    success: bool = False
    error: str | None = None  # set when the env crashed; the trajectory ended there

    @property
    def episode_return(self) -> float:
        """Undiscounted sum of step rewards."""
        return float(sum(s.reward for s in self.steps))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [N, L] int64
    attention_mask: torch.Tensor  # [N, L] int64
    response_mask: torch.Tensor  # [N, L] float, 1 on response tokens
    old_logprobs: torch.Tensor  # [N, L] float, sampling log-probs on response tokens
    rewards: torch.Tensor  # [N] float, each step's reward
    uid: torch.Tensor  # [N] int64, group of the row's trajectory
    traj: torch.Tensor  # [N] int64, trajectory index (unique across the batch)
    step: torch.Tensor  # [N] int64, position of the step in its trajectory
    anchor: torch.Tensor  # [N] int64, id of the anchor state (equal ids = identical state)
    invalid: torch.Tensor  # [N] bool
    episode_return: torch.Tensor  # [N] float, return of the row's trajectory (same for all its steps)
    anchor_text: list[str] = field(default_factory=list)  # [N] raw anchors, for similarity grouping
    token_rewards: torch.Tensor | None = None  # [N, L] float, dense rewards from a shaper
    ref_logprobs: torch.Tensor | None = None  # [N, L] float, reference-policy log-probs (algos that need them)
    values: torch.Tensor | None = None  # [N, L] float, critic values at rollout time (critic methods)
    advantages: torch.Tensor | None = None  # [N, L] float, filled by the algo
    returns: torch.Tensor | None = None  # [N, L] float, for critic methods

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
        uid=torch.tensor([t.uid for _, _, t, _ in rows]),
        traj=torch.tensor([ti for ti, *_ in rows]),
        step=torch.tensor([si for _, si, *_ in rows]),
        anchor=anchors,
        invalid=torch.tensor([s.invalid for *_, s in rows]),
        episode_return=torch.tensor([t.episode_return for _, _, t, _ in rows], dtype=torch.float32),
        anchor_text=[s.anchor for *_, s in rows],
    )
