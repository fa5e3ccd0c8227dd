from calmrl.envs.base import Observation, StepResult
from calmrl.envs.gridworld import GridWorld
from calmrl.policy import PromptTemplate
from calmrl.rollout import Generation, run_episodes


def scripted(choose):
    """A generate function that answers each prompt with choose(prompt)."""

    def generate(prompts):
        return [Generation(prompt_ids=[1, 2], response_ids=[3], logprobs=[-0.5], text=choose(p)) for p in prompts]

    return generate


def expert_generate(envs):
    # the prompts come in the order of the still-active envs; the expert reads the env state directly
    state = {"active": list(range(len(envs)))}

    def generate(prompts):
        actions = [envs[i].expert_action() for i in state["active"]]
        state["active"] = [i for i in state["active"]]  # updated below by the caller's dones
        return [Generation([1], [2], [-0.1], a) for a in actions]

    return generate


def test_expert_episodes_succeed_and_record_steps():
    envs = [GridWorld() for _ in range(4)]
    # every env solved by its own expert: a generate that answers by env order only works when all stay
    # active together, so play one env per call
    for seed in range(4):
        env = envs[seed]
        trajs = run_episodes(
            [env],
            [seed],
            [0],
            PromptTemplate("plain", 1),
            lambda p, e=env: [Generation([1], [2], [-0.1], e.expert_action())],
            invalid_penalty=0.1,
            max_steps=30,
        )
        t = trajs[0]
        assert t.success and t.error is None
        assert t.episode_return == 1.0
        assert all(not s.invalid for s in t.steps)
        assert t.steps[0].anchor != t.steps[-1].anchor


def test_invalid_output_penalised_and_state_kept():
    envs = [GridWorld()]
    trajs = run_episodes(
        envs,
        [0],
        [7],
        PromptTemplate("plain"),
        scripted(lambda p: "fly away"),
        invalid_penalty=0.25,
        max_steps=3,
    )
    t = trajs[0]
    assert t.uid == 7 and len(t.steps) == 3 and not t.success
    assert all(s.invalid and (s.reward, s.penalty) == (0.0, 0.25) and s.action is None for s in t.steps)
    assert len({s.anchor for s in t.steps}) == 1
    assert abs(t.episode_return + 0.75) < 1e-9


class Crashy:
    task = "crash ."
    max_steps = 5

    def __init__(self, crash_at):
        self.crash_at = crash_at

    def reset(self, seed):
        if self.crash_at == "reset":
            raise RuntimeError("boom")
        self.n = 0
        return Observation("obs", "s0", ("go",))

    def step(self, action):
        self.n += 1
        if self.crash_at == self.n:
            raise RuntimeError("kaput")
        return StepResult(Observation("obs", f"s{self.n}", ("go",)), 0.0, False, {})


def test_crashing_envs_end_only_their_trajectory():
    envs = [Crashy("reset"), Crashy(2), Crashy(None)]
    trajs = run_episodes(
        envs, [0, 1, 2], [0, 0, 0], PromptTemplate("plain"), scripted(lambda p: "go"), 0.1, max_steps=4
    )
    assert "reset failed" in trajs[0].error and trajs[0].steps == []
    assert "step failed" in trajs[1].error and len(trajs[1].steps) == 2 and trajs[1].steps[-1].info["error"]
    assert trajs[2].error is None and len(trajs[2].steps) == 4


def test_timings_accumulate():
    timings = {}
    run_episodes([GridWorld()], [0], [0], PromptTemplate("plain"), scripted(lambda p: "north"), 0.1, 2, timings)
    assert timings["generate"] >= 0 and timings["env"] > 0
