"""The budgeted rollout of BRPO (AnytimeReasoner, `algo=brpo`): thinking cut at S budgets, A summaries per cut.

For every env (one problem, single turn):
  1. the policy thinks: up to B = algo.budget new tokens after the prompt (stopping early at EOS);
  2. for each budget b_j = (B / S) j, the trace is cut at min(b_j, its length) and the prompt
       prompt + thinking[:cut] + suffix
     (`truncated_suffix`, "... ... </think> **Final Answer**" with blank lines, as the reference's
     `sample_partial_cot`, when the cut falls inside the trace or the trace ran out of budget; `finished_suffix`
     when the trace ended by itself before b_j) gets A sampled summaries of at most `summary_max_tokens` tokens;
  3. the env scores every summary on its own (reset to the same seed, then step(summary text)): r[j, a].

Each trajectory holds 1 + S A steps, the layout `algos/brpo.py` reads: step 0 is the thinking (reward 0, its
response the whole trace), step 1 + j A + a the a-th summary after budget j (reward r[j, a]). A summary row's
prompt is the tokenised cut prompt, so its log-probs are conditioned on exactly what the learner will see.
`success` is the first summary at the full budget (the standard-reasoning answer).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence

from calmrl.data import Step, Trajectory
from calmrl.envs.base import TextEnv
from calmrl.envs.pool import EnvPool, InlinePool
from calmrl.policy.template import PromptTemplate
from calmrl.rollout.episodes import GenerateFn

log = logging.getLogger(__name__)


def with_max_tokens(generate: GenerateFn, max_new_tokens: int) -> GenerateFn:
    """A copy of `generate` (an `HFGenerator`-like object with `max_new_tokens`) with another response budget."""
    if not hasattr(generate, "max_new_tokens"):
        raise TypeError("the budgeted rollout needs a generator with a `max_new_tokens` attribute (rollout=hf)")
    out = copy.copy(generate)
    out.max_new_tokens = int(max_new_tokens)
    return out


def budget_cuts(length: int, budget: int, num_budgets: int) -> list[int]:
    """Where each budget b_j = (B / S) j cuts a trace of `length` tokens: min(b_j, length), j = 1..S."""
    step = int(budget) // int(num_budgets)
    return [min(step * j, int(length)) for j in range(1, int(num_budgets) + 1)]


def run_budgeted_episodes(
    envs: Sequence[TextEnv] | EnvPool,
    seeds: Sequence[int],
    uids: Sequence[int],
    template: PromptTemplate,
    generate: GenerateFn,
    algo_cfg,
    tokenizer,
    timings: dict[str, float] | None = None,
) -> list[Trajectory]:
    """One budgeted episode per env (env i reset with seeds[i], labelled group uids[i]); see the module docstring.

    algo_cfg: the brpo config (budget, num_budgets, num_summaries, summary_max_tokens, truncated_suffix,
    finished_suffix). tokenizer: the policy's (decodes the thinking cut and knows EOS).
    """
    pool = InlinePool(envs) if isinstance(envs, list | tuple) else envs
    timings = timings if timings is not None else {}
    timings.setdefault("generate", 0.0)
    timings.setdefault("env", 0.0)
    s_count, a_count = int(algo_cfg.num_budgets), int(algo_cfg.num_summaries)
    trajs = [Trajectory(uid=int(u), seed=int(s), task="") for u, s in zip(uids, seeds, strict=True)]

    t_env = time.perf_counter()
    obs = {}
    for i, out in enumerate(pool.reset(range(len(trajs)), [int(s) for s in seeds])):
        if isinstance(out, BaseException):
            trajs[i].error = f"reset failed: {out!r}"
            log.warning("env %d (seed %d) failed at reset: %r", i, seeds[i], out)
        else:
            obs[i], trajs[i].task = out
    timings["env"] += time.perf_counter() - t_env
    active = sorted(obs)
    if not active:
        return trajs

    # 1. thinking, up to the full budget B
    prompts = {i: template.build(trajs[i].task, [], obs[i]) for i in active}
    t_gen = time.perf_counter()
    thoughts = dict(zip(active, with_max_tokens(generate, algo_cfg.budget)([prompts[i] for i in active]), strict=True))
    timings["generate"] += time.perf_counter() - t_gen

    # 2. A summaries after each of the S cuts
    eos = tokenizer.eos_token_id
    summary_prompts, cuts = [], {}
    for i in active:
        ids = thoughts[i].response_ids
        ended = bool(ids) and ids[-1] == eos  # the trace stopped by itself
        cuts[i] = budget_cuts(len(ids), algo_cfg.budget, s_count)
        for cut in cuts[i]:
            finished = ended and cut == len(ids)
            text = tokenizer.decode(ids[:cut], skip_special_tokens=True)
            suffix = algo_cfg.finished_suffix if finished else algo_cfg.truncated_suffix
            summary_prompts += [prompts[i] + text + suffix] * a_count
    t_gen = time.perf_counter()
    summaries = with_max_tokens(generate, algo_cfg.summary_max_tokens)(summary_prompts)
    timings["generate"] += time.perf_counter() - t_gen
    per_env = s_count * a_count
    summaries_of = {i: summaries[k * per_env : (k + 1) * per_env] for k, i in enumerate(active)}

    # 3. the env scores every summary on its own: reset to the same problem, step with the summary
    scores: dict[int, list[float]] = {i: [] for i in active}
    infos: dict[int, list[dict]] = {i: [] for i in active}
    for k in range(per_env):
        live = [i for i in active if trajs[i].error is None]
        if not live:
            break
        t_env = time.perf_counter()
        resets = pool.reset(live, [int(seeds[i]) for i in live])
        ok = []
        for i, out in zip(live, resets, strict=True):
            if isinstance(out, BaseException):
                trajs[i].error = f"reset failed: {out!r}"
                log.warning("env %d (seed %d) failed at reset: %r", i, seeds[i], out)
            else:
                ok.append(i)
        results = pool.step(ok, [summaries_of[i][k].text for i in ok])
        timings["env"] += time.perf_counter() - t_env
        for i, result in zip(ok, results, strict=True):
            if isinstance(result, BaseException):
                trajs[i].error = f"step failed: {result!r}"
                log.warning("env %d (seed %d) failed scoring summary %d: %r", i, seeds[i], k, result)
                continue
            scores[i].append(float(result.reward))
            infos[i].append(dict(result.info))

    for i in active:
        if trajs[i].error is not None:
            continue
        think = thoughts[i]
        trajs[i].steps.append(
            Step(
                prompt_ids=think.prompt_ids,
                response_ids=think.response_ids,
                logprobs=think.logprobs,
                response_text=think.text,
                action=None,
                reward=0.0,
                anchor=obs[i].anchor,
                info={"cuts": cuts[i]},
            )
        )
        for k, (gen, score, info) in enumerate(zip(summaries_of[i], scores[i], infos[i], strict=True)):
            j, a = divmod(k, a_count)
            trajs[i].steps.append(
                Step(
                    prompt_ids=gen.prompt_ids,
                    response_ids=gen.response_ids,
                    logprobs=gen.logprobs,
                    response_text=gen.text,
                    action=gen.text,
                    reward=score,
                    anchor=obs[i].anchor,
                    info={**info, "budget": j, "summary": a, "cut": cuts[i][j]},
                )
            )
        trajs[i].success = bool(scores[i][(s_count - 1) * a_count] > 0)
    return trajs
