"""Shared fixtures: a tiny policy built once per session through the real build + load path."""

from __future__ import annotations

import os

import pytest

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
    """Builder of a Trajectory with one step per reward: make_trajectory(uid, rewards, prompt_len, response_len, logprob)."""
    from calmrl.data import Step, Trajectory

    def make(uid, rewards, prompt_len=2, response_len=1, logprob=-0.5):
        steps = [
            Step(
                prompt_ids=[1] * prompt_len,
                response_ids=[2] * response_len,
                logprobs=[logprob] * response_len,
                response_text="x",
                action="x",
                reward=r,
                anchor=f"s{k}",
            )
            for k, r in enumerate(rewards)
        ]
        return Trajectory(uid=uid, seed=uid, task="t", steps=steps)

    return make
