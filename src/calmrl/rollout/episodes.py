"""The multi-turn episode loop, shared by every generation backend.

All live episodes advance together: one batched `generate` call per turn for every env that is still
running, then each env steps on its parsed action. A response that fails the format check does not
reach the env: the step is recorded as invalid, with the penalty in `Step.penalty` (apart from the env's
reward), and the observation stays the same.
An env that raises ends its own trajectory with `error` set; the other episodes go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from calmrl.data import Step, Trajectory
from calmrl.envs.base import Observation, TextEnv
from calmrl.envs.pool import EnvPool, InlinePool
from calmrl.policy.template import PromptTemplate

log = logging.getLogger(__name__)


@dataclass
class Generation:
    prompt_ids: list[int]
    response_ids: list[int]  # includes the EOS token when one was generated
    logprobs: list[float]  # sampling log-prob of each response token
    text: str  # decoded response without special tokens


#: prompts -> one Generation per prompt
GenerateFn = Callable[[list[str]], list[Generation]]


def run_episodes(
    envs: Sequence[TextEnv] | EnvPool,
    seeds: Sequence[int],
    uids: Sequence[int],
    template: PromptTemplate,
    generate: GenerateFn,
    invalid_penalty: float,
    max_steps: int,
    timings: dict[str, float] | None = None,
) -> list[Trajectory]:
    """Play one episode in each env (env i reset with seeds[i], labelled group uids[i]).

    `timings`, when given, accumulates seconds spent in "generate" and in "env" (reset + step).
    """
    pool = InlinePool(envs) if isinstance(envs, list | tuple) else envs
    timings = timings if timings is not None else {}
    timings.setdefault("generate", 0.0)
    timings.setdefault("env", 0.0)
    trajs = [Trajectory(uid=int(u), seed=int(s), task="") for u, s in zip(uids, seeds, strict=True)]
    obs: list[Observation | None] = [None] * len(trajs)
    history: list[list[tuple[str, str]]] = [[] for _ in trajs]
    active: list[int] = []

    t_env = time.perf_counter()
    for i, out in enumerate(pool.reset(range(len(trajs)), [int(s) for s in seeds])):
        if isinstance(out, BaseException):  # a broken env must not take the run down
            trajs[i].error = f"reset failed: {out!r}"
            log.warning("env %d (seed %d) failed at reset: %r", i, seeds[i], out)
        else:
            obs[i], trajs[i].task = out
            trajs[i].category = obs[i].category
            active.append(i)
    timings["env"] += time.perf_counter() - t_env

    for _turn in range(max_steps):
        if not active:
            break
        prompts = [template.build(trajs[i].task, history[i], obs[i]) for i in active]
        t_gen = time.perf_counter()
        generations = generate(prompts)
        timings["generate"] += time.perf_counter() - t_gen

        # Parse every response, then step all envs with a valid action in one pool call (parallel for
        # process pools); a response that fails the format check never reaches its env.
        actions = [
            template.parse(gen.text, obs[i].admissible, free_form=obs[i].free_form)
            for i, gen in zip(active, generations, strict=True)
        ]
        to_step = [(i, a) for i, a in zip(active, actions, strict=True) if a is not None]
        t_env = time.perf_counter()
        stepped = dict(
            zip([i for i, _ in to_step], pool.step([i for i, _ in to_step], [a for _, a in to_step]), strict=True)
        )
        timings["env"] += time.perf_counter() - t_env

        still_active = []
        for i, gen, action in zip(active, generations, actions, strict=True):
            ob = obs[i]
            reward, done, info = 0.0, False, {}
            if action is not None:
                result = stepped[i]
                if isinstance(result, BaseException):
                    trajs[i].error = f"step failed: {result!r}"
                    log.warning("env %d (seed %d) failed at step %d: %r", i, seeds[i], len(trajs[i].steps), result)
                    done, info = True, {"error": trajs[i].error}
                else:
                    obs[i], reward, done, info = (
                        result.observation,
                        float(result.reward),
                        result.done,
                        dict(result.info),
                    )
            if "category" in info:
                trajs[i].category = str(info["category"])
            invalid = action is None or bool(info.get("invalid", False))
            trajs[i].steps.append(
                Step(
                    prompt_ids=gen.prompt_ids,
                    response_ids=gen.response_ids,
                    logprobs=gen.logprobs,
                    response_text=gen.text,
                    action=action,
                    reward=reward,
                    anchor=ob.anchor,
                    invalid=invalid,
                    penalty=invalid_penalty if invalid else 0.0,  # kept apart: the algo decides where it goes
                    # the texts around the action, for shapers that judge transitions (CALM)
                    info={**info, "obs_before": ob.text, "obs_after": obs[i].text},
                )
            )
            history[i].append((ob.text, action if action is not None else gen.text.strip()))
            if done:
                trajs[i].success = bool(info.get("success", False))
            else:
                still_active.append(i)
        active = still_active
    return trajs


def play_episodes(
    program: Callable[..., list[Trajectory]] | None,
    envs: Sequence[TextEnv] | EnvPool,
    seeds: Sequence[int],
    uids: Sequence[int],
    template: PromptTemplate,
    generate: GenerateFn,
    *,
    algo_cfg,
    env_cfg,
    tokenizer,
    timings: dict[str, float] | None = None,
) -> list[Trajectory]:
    """A training iteration's episodes, wherever the rollout role runs (the trainer's process or a Ray worker):
    the method's own episode program (`Method.rollout`, e.g. algo=brpo's budgeted thinking) when it has one, else
    the multi-turn loop above."""
    if program is not None:
        return program(
            envs,
            seeds=seeds,
            uids=uids,
            template=template,
            generate=generate,
            algo_cfg=algo_cfg,
            tokenizer=tokenizer,
            timings=timings,
        )
    return run_episodes(
        envs,
        seeds=seeds,
        uids=uids,
        template=template,
        generate=generate,
        invalid_penalty=env_cfg.invalid_penalty,
        max_steps=env_cfg.max_steps,
        timings=timings,
    )
