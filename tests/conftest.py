"""Shared fixtures: a tiny policy built once per session through the real build + load path."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    from omegaconf import OmegaConf

    from calmrl.envs.gridworld import GridWorld
    from calmrl.policy import PromptTemplate, build_tiny_policy

    cfg = OmegaConf.create(
        {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_layers": 1,
            "num_heads": 2,
            "num_kv_heads": 1,
            "init_seed": 0,
        }
    )
    words = GridWorld.vocabulary(5) + PromptTemplate.vocabulary()
    return build_tiny_policy(tmp_path_factory.mktemp("tiny"), words, cfg)


@pytest.fixture()
def tiny_policy(tiny_policy_dir):
    from calmrl.policy import load_policy

    return load_policy(tiny_policy_dir)


@pytest.fixture()
def make_trajectory():
    """Builder of a Trajectory with one step per reward: make_trajectory(uid, rewards, prompt_len, response_len,
    logprob, invalid): `invalid` lists the steps whose action was invalid (each costs `penalty`, kept apart)."""
    from calmrl.data import Step, Trajectory

    def make(uid, rewards, prompt_len=2, response_len=1, logprob=-0.5, invalid=(), penalty=0.1):
        steps = [
            Step(
                prompt_ids=[1] * prompt_len,
                response_ids=[2] * response_len,
                logprobs=[logprob] * response_len,
                response_text="x",
                action="x",
                reward=r,
                anchor=f"s{k}",
                invalid=k in invalid,
                penalty=penalty if k in invalid else 0.0,
            )
            for k, r in enumerate(rewards)
        ]
        return Trajectory(uid=uid, seed=uid, task="t", steps=steps)

    return make


@pytest.fixture
def random_agent_trajectories(make_trajectory):
    """random_agent_trajectories(seed, n, groups, p_reward, p_invalid): n agent-like trajectories of 1-5 steps
    in `groups` groups (trajectory k in group k % groups), each step rewarded 1 with p_reward and invalid with
    p_invalid (each invalid step costs 0.1, kept apart), all drawn from a torch generator seeded with `seed`."""

    def make(seed, n=14, groups=4, p_reward=0.2, p_invalid=0.3):
        g = torch.Generator().manual_seed(seed)
        trajs = []
        for k in range(n):
            length = int(torch.randint(1, 6, (1,), generator=g))
            rewards = (torch.rand(length, generator=g) < p_reward).float().tolist()
            bad = tuple(int(i) for i in torch.nonzero(torch.rand(length, generator=g) < p_invalid).flatten())
            trajs.append(make_trajectory(k % groups, rewards, invalid=bad))
        return trajs

    return make
