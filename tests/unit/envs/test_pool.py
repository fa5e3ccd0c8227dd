import os
import time

import pytest

from calmrl.envs import make_pool
from calmrl.envs.base import Observation, StepResult
from calmrl.envs.gridworld import GridWorld
from calmrl.envs.pool import EnvTimeout, EnvWorkerDied, InlinePool, ProcessPool
from calmrl.policy import PromptTemplate
from calmrl.rollout import Generation, run_episodes

# longer than pytest's per-test timeout: a pool call that returns has not waited for a hung env
HANG_S = 3600


class Faulty:
    """An env that behaves until step `at`, then raises, hangs or kills its own process."""

    task = "test ."
    max_steps = 10

    def __init__(self, mode=None, at=2):
        self.mode, self.at = mode, at

    def reset(self, seed):
        self.n = 0
        return Observation(f"start {seed}", "s0", ("go",))

    def step(self, action):
        self.n += 1
        if self.n == self.at:
            if self.mode == "raise":
                raise ValueError("broken game file")
            if self.mode == "hang":
                time.sleep(HANG_S)
            if self.mode == "die":
                os._exit(3)
        return StepResult(Observation(f"obs {self.n}", f"s{self.n}", ("go",)), 0.0, False, {})


def faulty_factory(modes):
    """make_env(slot) for a ProcessPool: slot i behaves as modes[i]."""
    return lambda slot: Faulty(modes[slot])


def test_inline_pool_returns_exceptions_per_env():
    pool = InlinePool([Faulty(), Faulty("raise")])
    assert all(isinstance(o, tuple) for o in pool.reset([0, 1], [5, 6]))
    out = pool.step([0, 1], ["go", "go"])
    out = pool.step([0, 1], ["go", "go"])
    assert isinstance(out[0], StepResult) and isinstance(out[1], ValueError)


def test_process_pool_matches_inline_gridworld():
    cfg = {
        "name": "gridworld",
        "size": 5,
        "walls": 3,
        "key": False,
        "max_steps": 12,
        "distances": True,
        "walls_text": True,
        "pool": "process",
        "timeout_s": 10,
    }
    proc = make_pool(cfg, 3)
    inline = make_pool({**cfg, "pool": "inline"}, 3)
    try:
        assert isinstance(proc, ProcessPool) and isinstance(inline, InlinePool)
        a, b = proc.reset([0, 1, 2], [7, 8, 9]), inline.reset([0, 1, 2], [7, 8, 9])
        assert a == b
        for action in ["north", "west", "south"]:
            assert proc.step([0, 2], [action, action]) == inline.step([0, 2], [action, action])
    finally:
        proc.close()


def test_hung_env_times_out_alone_and_its_slot_recovers():
    pool = ProcessPool(faulty_factory([None, "hang", None]), 3, timeout_s=1.0)
    try:
        pool.reset([0, 1, 2], [0, 1, 2])
        pool.step([0, 1, 2], ["go"] * 3)
        out = pool.step([0, 1, 2], ["go"] * 3)  # returning at all (long before HANG_S) is the timeout at work
        assert isinstance(out[0], StepResult) and isinstance(out[2], StepResult)
        assert isinstance(out[1], EnvTimeout) and "within 1 s" in str(out[1])
        # the hung worker was replaced: the slot answers again after a reset
        obs, task = pool.reset([1], [42])[0]
        assert obs.text == "start 42" and task == "test ."
    finally:
        pool.close()


@pytest.mark.parametrize("mode, error", [("raise", RuntimeError), ("die", EnvWorkerDied)])
def test_raising_or_dying_env_is_isolated(mode, error):
    pool = ProcessPool(faulty_factory([None, mode]), 2, timeout_s=10)
    try:
        pool.reset([0, 1], [0, 1])
        pool.step([0, 1], ["go", "go"])
        out = pool.step([0, 1], ["go", "go"])
        assert isinstance(out[0], StepResult) and isinstance(out[1], error)
        if mode == "raise":
            assert "ValueError: broken game file" in str(out[1])
    finally:
        pool.close()


def test_run_episodes_ends_only_the_hung_trajectory():
    pool = ProcessPool(faulty_factory([None, "hang", None]), 3, timeout_s=1.0)
    go = lambda prompts: [Generation([1], [2], [-0.1], "go") for _ in prompts]  # noqa: E731
    try:
        trajs = run_episodes(pool, [0, 1, 2], [0, 0, 0], PromptTemplate("plain"), go, 0.1, max_steps=4)
    finally:
        pool.close()
    assert trajs[0].error is None and len(trajs[0].steps) == 4
    assert trajs[2].error is None and len(trajs[2].steps) == 4
    assert "EnvTimeout" in trajs[1].error and len(trajs[1].steps) == 2


def test_gridworld_vocabulary_still_builds_the_tiny_policy():
    assert "north" in GridWorld().vocabulary()
