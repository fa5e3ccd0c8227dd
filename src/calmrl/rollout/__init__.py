"""Rollout engines: turn (policy, envs) into trajectories. `hf` generates in-process with transformers."""

from calmrl.rollout.episodes import Generation, play_episodes, run_episodes
from calmrl.rollout.hf import HFGenerator

__all__ = ["Generation", "HFGenerator", "play_episodes", "run_episodes"]
