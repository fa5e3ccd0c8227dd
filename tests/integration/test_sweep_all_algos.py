"""Issue 9: every online credit-assignment method composes, validates and trains in ONE multirun on env=math.

    calmrl train -m algo=grpo,rloo,reinforce_pp,ppo,gigpo,ma_ppo,archer,pure,brpo env=math env.data_path=...

`pure` and `brpo` are single-turn reasoning methods (math); the others run on any text env. No per-algo
override is needed: brpo's thinking budget defaults to the run's response budget (conf/algo/brpo.yaml:
`budget: ${rollout.max_new_tokens}`), and pure without `shaper=prm_minform` is RLOO on the verifiable reward.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from conftest import calmrl

DATA = Path(__file__).resolve().parents[1] / "data" / "math" / "gsm8k.jsonl"
ALGOS = ["grpo", "rloo", "reinforce_pp", "ppo", "gigpo", "ma_ppo", "archer", "pure", "brpo"]
MAX_NEW_TOKENS = 8  # brpo: budget B = 8, cut at S = 4 budgets of 2 tokens, A = 4 summaries each
SWEEP = [
    "env=math",
    f"env.data_path={DATA}",
    "policy.hidden_size=32",
    "policy.intermediate_size=64",
    "policy.num_layers=1",
    "policy.num_heads=2",
    "policy.num_kv_heads=1",
    f"policy.max_new_tokens={MAX_NEW_TOKENS}",
    "rollout.num_groups=1",
    "rollout.group_size=2",
    "env.eval_episodes=2",
    "trainer.total_iters=1",
    "trainer.eval_every=0",
    "logger=jsonl",
]


def test_one_multirun_trains_every_online_algo_on_math(workdir):
    proc = calmrl("train", "-m", f"algo={','.join(ALGOS)}", *SWEEP, cwd=workdir, timeout=600)
    sweeps = list((workdir / "runs" / "multirun").iterdir())
    assert len(sweeps) == 1, sweeps  # one command, one sweep directory
    runs = {p.name.split("-", 1)[1]: p for p in sweeps[0].iterdir() if p.is_dir()}
    assert sorted(runs) == sorted(f"math-{a}-seed0" for a in ALGOS), proc.stdout[-2000:]
    for algo in ALGOS:
        run = runs[f"math-{algo}-seed0"]
        config = (run / ".hydra" / "config.yaml").read_text()
        assert f"name: {algo}\n" in config and "name: math\n" in config
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert [r["iter"] for r in rows] == [1], algo
        row = rows[0]
        assert row["rollout/env_errors"] == 0 and row["loss/skipped_steps"] == 0, (algo, row)
        # the credit checks (calmrl.credit_checks) on a real batch: no credit off the response tokens, no group with
        # a signal left without credit
        assert row["credit/offmask_adv_abs_max"] == 0 and row["credit/dead_informative_groups"] == 0, (algo, row)
        # single-turn: one row per sample; brpo adds S x A summary rows to each trace
        assert row["perf/steps"] == (2 * (1 + 4 * 4) if algo == "brpo" else 2), (algo, row["perf/steps"])
        if algo == "archer":  # critic warm-up (algo.critic_warmup_iters): the critic trains, the actor waits
            losses = [row["critic/q_loss"], row["critic/v_loss"]]
            assert row["critic/steps"] >= 1
        else:
            losses = [row["loss/policy"], row["loss/neg_logprob"]]
            assert row["loss/optimizer_steps"] >= 1 and row["loss/neg_logprob"] > 0, (algo, row)
        assert all(math.isfinite(x) for x in losses), (algo, losses)
        assert (run / "checkpoints").is_dir(), algo


def test_every_online_algo_trains_on_deepspeed_in_one_process(workdir):
    """learner=deepspeed with cluster=local: one DeepSpeed rank in each job's process, for every online algo (the
    critic methods' value model is a second DeepSpeed engine, its state saved under its own tag)."""
    calmrl("train", "-m", f"algo={','.join(ALGOS)}", "learner=deepspeed", *SWEEP, cwd=workdir, timeout=900)
    (sweep,) = list((workdir / "runs" / "multirun").iterdir())
    runs = {p.name.split("-", 1)[1]: p for p in sweep.iterdir() if p.is_dir()}
    assert sorted(runs) == sorted(f"math-{a}-seed0" for a in ALGOS)
    for algo in ALGOS:
        run = runs[f"math-{algo}-seed0"]
        (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        assert row["loss/skipped_steps"] == 0, (algo, row)
        if algo != "archer":  # archer's actor waits for its critic's warm-up (see above)
            assert row["loss/optimizer_steps"] >= 1 and math.isfinite(row["loss/policy"]), (algo, row)
        assert list((run / "checkpoints").glob("step_*/deepspeed/state")), algo  # DeepSpeed's own state saved
        if algo in ("ppo", "ma_ppo"):
            assert math.isfinite(row["critic/value_loss"]), (algo, row)
            assert list((run / "checkpoints").glob("step_*/deepspeed/critic")), algo
