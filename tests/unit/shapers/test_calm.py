"""shaper=calm: lambda per subgoal at most once per episode, the decomposition cache, judge failures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from calmrl.data import Step, Trajectory, build_batch
from calmrl.envs.gridworld import GOAL_SUBGOAL, KEY_SUBGOAL, GridWorld
from calmrl.judges.local_server import LocalOpenAIServer, gridworld_answer
from calmrl.judges.oracle import OracleSubgoalJudge
from calmrl.shapers import ShaperContext, build_shaper
from calmrl.shapers.calm import CalmShaper, once_per_episode

CALM_YAML = Path(__file__).resolve().parents[3] / "conf" / "shaper" / "calm.yaml"
KEY_TASK = "pick up the key then reach the goal ."


def step(before: str, action: str, after: str, reward: float = 0.0, subgoals=None) -> Step:
    info = {"obs_before": before, "obs_after": after}
    if subgoals is not None:
        info["subgoals"] = subgoals
    return Step([1, 1], [2], [-0.1], action, action, reward, anchor=before, info=info)


def expert_trajectory(seed: int, uid: int = 0, detour: bool = False) -> Trajectory:
    """One gridworld key episode played by the expert (with a pickup retried after the key is held if `detour`)."""
    env = GridWorld(size=5, walls=3, key=True, max_steps=30)
    obs = env.reset(seed)
    traj = Trajectory(uid=uid, seed=seed, task=env.task)
    while True:
        action = env.expert_action()
        res = env.step(action)
        traj.steps.append(step(obs.text, action, res.observation.text, res.reward, res.info.get("subgoals")))
        if detour and action == "pickup":  # an inadmissible second pickup: the observation stays the same
            again = env.step("pickup")
            traj.steps.append(step(res.observation.text, "pickup", again.observation.text, 0.0, ["pick up the key"]))
        obs = res.observation
        if res.done:
            traj.success = bool(res.info.get("success"))
            return traj


class CountingOracle(OracleSubgoalJudge):
    def __init__(self):
        super().__init__({"name": "gridworld"})
        self.decompose_calls: list[list[str]] = []
        self.asked = 0

    def decompose(self, tasks):
        self.decompose_calls.append(list(tasks))
        return super().decompose(tasks)

    def achieved(self, transitions, subgoals):
        self.asked += len(transitions)
        return super().achieved(transitions, subgoals)


def test_once_per_episode_pays_each_subgoal_once():
    achieved = [{"a"}, {"a"}, set(), {"a", "b"}, {"b", "c"}]
    assert once_per_episode(achieved, 0.5) == [0.5, 0.0, 0.0, 0.5, 0.5]


def test_expert_episode_gets_lambda_per_subgoal_on_the_right_steps():
    trajs = [expert_trajectory(3), expert_trajectory(3, detour=True)]
    batch = build_batch(trajs, pad_token_id=0)
    shaper = CalmShaper(CountingOracle(), bonus=0.3)
    out = shaper(batch, trajs)
    bonus = out.step_bonus.tolist()
    flat = [s for t in trajs for s in t.steps]
    for b, s in zip(bonus, flat, strict=True):
        first_time = s.action == "pickup" and s.info["obs_before"] != s.info["obs_after"]
        expected = 0.3 if first_time or s.info.get("subgoals") == [GOAL_SUBGOAL] else 0.0
        assert b == pytest.approx(expected)
    # each episode: exactly two subgoals, 2 x lambda in total, whatever the judge says about repeats
    for ti in range(2):
        assert out.step_bonus[batch.traj == ti].sum().item() == pytest.approx(0.6)
    assert shaper.metrics()["reward/calm_subgoals_per_episode"] == pytest.approx(2.0)
    # env rewards untouched
    assert torch.equal(out.rewards, torch.tensor([s.reward for s in flat]))


def test_repeated_claims_by_the_judge_pay_only_once():
    class AlwaysBoth(OracleSubgoalJudge):
        def achieved(self, transitions, subgoals):
            return [set(s) for s in subgoals]

    traj = Trajectory(0, 0, KEY_TASK, [step(f"o{k}", "east", f"o{k + 1}") for k in range(4)])
    out = CalmShaper(AlwaysBoth({"name": "gridworld"}), bonus=1.0)(build_batch([traj], 0), [traj])
    assert out.step_bonus.tolist() == [2.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("lam", [0.0, 0.1, 2.5])
def test_bonus_scales_with_lambda(lam):
    trajs = [expert_trajectory(s, uid=s) for s in range(4)]
    out = CalmShaper(CountingOracle(), bonus=lam)(build_batch(trajs, 0), trajs)
    assert out.step_bonus.sum().item() == pytest.approx(lam * 2 * len(trajs))


def test_decomposition_is_asked_once_per_task_for_the_run():
    judge = CountingOracle()
    shaper = CalmShaper(judge, bonus=0.1)
    trajs = [expert_trajectory(s, uid=s) for s in range(3)]
    shaper(build_batch(trajs, 0), trajs)
    shaper(build_batch(trajs, 0), trajs)
    plain = Trajectory(9, 9, "reach the goal .", [step("goal east .", "east", "goal here .", 1.0, [GOAL_SUBGOAL])])
    shaper(build_batch([plain], 0), [plain])
    assert judge.decompose_calls == [[KEY_TASK], ["reach the goal ."]]
    assert shaper.subgoals == {KEY_TASK: [KEY_SUBGOAL, GOAL_SUBGOAL], "reach the goal .": [GOAL_SUBGOAL]}


def test_an_empty_decomposition_is_asked_again():
    class FirstEmpty(CountingOracle):
        def decompose(self, tasks):
            got = super().decompose(tasks)
            return [[] for _ in got] if len(self.decompose_calls) == 1 else got

    judge = FirstEmpty()
    shaper = CalmShaper(judge, bonus=0.1)
    trajs = [expert_trajectory(1)]
    assert shaper(build_batch(trajs, 0), trajs).step_bonus.sum() == 0  # no subgoals known: no bonus
    assert shaper(build_batch(trajs, 0), trajs).step_bonus.sum().item() == pytest.approx(0.2)
    assert len(judge.decompose_calls) == 2


def test_unchanged_observations_are_not_judged():
    judge = CountingOracle()
    traj = Trajectory(0, 0, KEY_TASK, [step("same", "north", "same"), step("same", "east", "other")])
    CalmShaper(judge, bonus=0.1, skip_unchanged=True)(build_batch([traj], 0), [traj])
    assert judge.asked == 1
    CalmShaper(judge, bonus=0.1, skip_unchanged=False)(build_batch([traj], 0), [traj])
    assert judge.asked == 3


def test_missing_observation_texts_are_a_clear_error():
    traj = Trajectory(0, 0, KEY_TASK, [Step([1], [2], [-0.1], "east", "east", 0.0, "s0")])
    with pytest.raises(KeyError, match="obs_before"):
        CalmShaper(CountingOracle(), bonus=0.1)(build_batch([traj], 0), [traj])


def _calm_cfg(**judge):
    """shaper=calm as a run composes it (conf/shaper/calm.yaml over its schema), with `judge` overrides."""
    from hydra import compose, initialize_config_dir

    from calmrl.config import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CALM_YAML.parents[1]), version_base="1.3"):
        cfg = compose("train", overrides=["run_name=t", "shaper=calm"]).shaper
    cfg.judge.update(judge)
    return cfg


def _ctx(tmp_path):
    return ShaperContext(None, torch.device("cpu"), tmp_path, tmp_path, OmegaConf.create({"name": "gridworld"}))


def test_openai_judge_through_the_factory_matches_the_oracle(tmp_path):
    trajs = [expert_trajectory(s, uid=s) for s in range(3)]
    with LocalOpenAIServer(answer=gridworld_answer) as server:
        cfg = _calm_cfg(backend="openai", model="m", base_url=server.base_url, max_retries=0)
        llm = build_shaper(cfg, _ctx(tmp_path))(build_batch(trajs, 0), trajs)
        first = server.requests
        shaper = build_shaper(cfg, _ctx(tmp_path))  # a fresh shaper (new run) on the same cache file
        shaper(build_batch(trajs, 0), trajs)
        assert server.requests == first  # decomposition and every transition came from the cache
        assert shaper.metrics()["judge/requested"] == 0 and shaper.metrics()["judge/cache_hits"] > 0
    oracle = CalmShaper(OracleSubgoalJudge({"name": "gridworld"}), bonus=cfg.bonus)(build_batch(trajs, 0), trajs)
    assert torch.equal(llm.step_bonus, oracle.step_bonus) and llm.step_bonus.sum() > 0


def test_a_hanging_judge_gives_zero_bonus_and_counts_failures(tmp_path):
    trajs = [expert_trajectory(s, uid=s) for s in range(2)]
    with LocalOpenAIServer(answer=gridworld_answer, hang=True) as server:
        cfg = _calm_cfg(backend="openai", model="m", base_url=server.base_url, timeout_s=0.1, max_retries=1)
        shaper = build_shaper(cfg, _ctx(tmp_path))
        out = shaper(build_batch(trajs, 0), trajs)
    assert out.step_bonus.abs().sum() == 0
    assert shaper.metrics()["judge/failures"] == 1  # the decomposition failed: nothing else was asked
    assert shaper.subgoals == {}
