"""Judge throughput: a repeated CALM shaping pass (cache + batching) vs the first pass, on one batch.

The batch is one training iteration's worth of gridworld key-mode trajectories (`--groups` tasks x
`--group-size` samples, a mix of expert and random moves, so states repeat across a group as they do in
training). The judge is the `openai` backend against the local OpenAI-compatible server
(calmrl.judges.local_server) answering exactly (`gridworld_answer`) after a simulated latency of
`--latency` s per request plus `--per-prompt` s per prompt in it. Three passes over the same batch:

    unbatched   batch_size=1, no cache: one request per distinct prompt (what a naive loop costs)
    first       batch_size=32, cold cache: the named baseline of the headline ratio
    repeated    a fresh shaper (a new run) on the warm on-disk cache: no request at all

and prints the time of each and the ratios first/repeated (target >= 20x) and unbatched/first. All three
produce the same step bonus (checked).

    python benchmarks/judge_throughput.py
    python benchmarks/judge_throughput.py --latency 0.2 --groups 16
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from calmrl.data import Step, Trajectory, build_batch
from calmrl.envs.gridworld import GridWorld
from calmrl.judges.local_server import LocalOpenAIServer, gridworld_answer
from calmrl.shapers import ShaperContext, build_shaper

CALM_YAML = Path(__file__).resolve().parents[1] / "conf" / "shaper" / "calm.yaml"


def trajectories(groups: int, group_size: int, explore: float = 0.5) -> list[Trajectory]:
    env = GridWorld(size=5, walls=3, key=True, max_steps=12)
    out = []
    for uid in range(groups):
        for k in range(group_size):
            rng = random.Random(uid * 1000 + k)
            obs = env.reset(uid)
            traj = Trajectory(uid=uid, seed=uid, task=env.task)
            for _ in range(env.max_steps):
                action = rng.choice(obs.admissible) if rng.random() < explore else env.expert_action()
                res = env.step(action)
                info = {"obs_before": obs.text, "obs_after": res.observation.text, **res.info}
                traj.steps.append(Step([1], [2], [-0.1], action, action, res.reward, obs.anchor, info=info))
                obs = res.observation
                if res.done:
                    break
            out.append(traj)
    return out


def shaping_pass(cfg, run_dir: Path, trajs) -> tuple[float, torch.Tensor, dict]:
    ctx = ShaperContext(None, torch.device("cpu"), run_dir, run_dir, OmegaConf.create({"name": "gridworld"}))
    shaper = build_shaper(cfg, ctx)
    batch = build_batch(trajs, pad_token_id=0)
    t0 = time.perf_counter()
    out = shaper(batch, trajs)
    return time.perf_counter() - t0, out.step_bonus, shaper.metrics()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--per-prompt", type=float, default=0.002, help="extra seconds per prompt in a request")
    args = parser.parse_args()

    trajs = trajectories(args.groups, args.group_size)
    steps = sum(len(t.steps) for t in trajs)
    from calmrl.schemas.shaper import CalmConfig

    base = OmegaConf.load(CALM_YAML)
    del base["defaults"]
    base = OmegaConf.merge(OmegaConf.structured(CalmConfig), base)  # the yaml sets only what differs from it
    with LocalOpenAIServer(gridworld_answer, delay_s=args.latency, delay_per_prompt_s=args.per_prompt) as server:
        judge = {"backend": "openai", "model": "bench", "base_url": server.base_url, "on_error": "fail"}
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            naive = OmegaConf.merge(base, {"judge": {**judge, "batch_size": 1, "cache": False}})
            batched = OmegaConf.merge(base, {"judge": {**judge, "batch_size": 32, "cache": True}})
            r0 = server.requests
            t_naive, b_naive, _ = shaping_pass(naive, tmp / "naive", trajs)
            r1 = server.requests
            t_first, b_first, m_first = shaping_pass(batched, tmp / "run", trajs)
            r2 = server.requests
            t_again, b_again, m_again = shaping_pass(batched, tmp / "run", trajs)
            r3 = server.requests
    assert torch.equal(b_naive, b_first) and torch.equal(b_first, b_again), "passes disagree"
    print(
        f"batch: {len(trajs)} trajectories, {steps} steps, {int(m_first['judge/transitions'])} transitions judged; "
        f"server latency {args.latency:g} s/request + {args.per_prompt:g} s/prompt"
    )
    print(f"  unbatched (batch 1, no cache): {t_naive:8.3f} s  {r1 - r0:5d} requests")
    print(f"  first pass (batch 32, cold)  : {t_first:8.3f} s  {r2 - r1:5d} requests  (baseline)")
    print(
        f"  repeated pass (warm cache)   : {t_again:8.3f} s  {r3 - r2:5d} requests, {int(m_again['judge/cache_hits'])} cache hits"
    )
    print(f"repeated pass vs first pass: {t_first / t_again:.1f}x faster (target >= 20x)")
    print(f"first pass (batched) vs unbatched: {t_naive / t_first:.1f}x faster")


if __name__ == "__main__":
    main()
