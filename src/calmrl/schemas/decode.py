"""The decode group's schemas (`calmrl eval decode=...`): sampling, or implicit-Q beam search. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodeConfig:
    name: str = "sample"  # the rollout's generator at rollout.eval_temperature (0 = greedy)


@dataclass
class ImplicitQBeamConfig(DecodeConfig):
    beam_width: int = 4  # beams kept per prompt; each expands to its policy's top `beam_width` tokens
    beta: float = 0.1  # score = sum_t beta * (log pi - log pi_ref); beta scales but never reorders it
    ref_path: str | None = None  # the DPO reference; None = the evaluated run's initial policy
