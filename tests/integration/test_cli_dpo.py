"""`calmrl train algo=dpo|dpo_treg data=...` and `calmrl eval decode=implicit_q_beam` as a user runs them.

The preference data are gridworld states in the policy's own prompt format: the chosen response is the
expert's move, the rejected one another admissible move. What the tiny policy has to learn (read the goal's
direction off the prompt) is within its reach, and the held-out pairs are other states of other layouts.
"""

from __future__ import annotations

import json
import random

import pytest
from conftest import FAST, calmrl

from calmrl.envs.gridworld import GridWorld
from calmrl.policy import PromptTemplate

TINY = [o for o in FAST if o.startswith("policy.")] + ["logger=jsonl"]


def write_gridworld_pairs(path, seeds=range(40), max_steps=6):
    """JSONL pairs (prompt, chosen = expert move, rejected = another admissible move) along expert trajectories."""
    template = PromptTemplate()
    rng = random.Random(0)
    rows = []
    for seed in seeds:
        env = GridWorld(size=5, walls=3, distances=False, walls_text=False, max_steps=max_steps)
        obs = env.reset(seed)
        history = []
        for _ in range(max_steps):
            good = env.expert_action()
            bad = [a for a in obs.admissible if a != good]
            if not bad:
                break
            prompt = template.build(env.task, history, obs)
            rows.append({"prompt": prompt, "chosen": " " + good, "rejected": " " + rng.choice(bad)})
            result = env.step(good)
            history.append((obs.text, good))
            obs = result.observation
            if result.done:
                break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_dpo_raises_the_held_out_margin_then_resumes_and_beam_decodes(workdir):
    n = write_gridworld_pairs(workdir / "pairs.jsonl")
    args = ["algo=dpo", "data=pairs.jsonl", "run_name=dpo", "trainer.eval_every=10", "trainer.checkpoint_every=10"]
    proc = calmrl("train", *args, "trainer.total_iters=40", *TINY, cwd=workdir)
    assert "computed in" in proc.stdout
    rows = metrics(workdir / "runs" / "dpo")
    evals = [r for r in rows if "eval/reward_margin" in r]
    print(f"\n{n} pairs; held-out implicit reward margin / accuracy by iteration:")
    for r in evals:
        print(f"  iter {r['iter']:>3}: margin {r['eval/reward_margin']:+.4f}  accuracy {r['eval/reward_accuracy']:.3f}")
    print(proc.stdout.strip().splitlines()[-3])
    assert {"loss/dpo", "reward/margin", "reward/accuracy"} <= set(rows[-1])
    assert rows[-1]["loss/optimizer_steps"] == 1.0
    # the untrained policy is its own reference: margin exactly 0 on every pair; training must raise it clearly
    assert evals[-1]["eval/reward_margin"] > 0.1
    assert evals[-1]["eval/reward_accuracy"] >= 0.8
    assert evals[-1]["eval/loss_dpo"] < 0.69  # below log 2, the loss at pi = pi_ref

    proc = calmrl("train", *args, "trainer.total_iters=50", *TINY, cwd=workdir)
    assert "resuming" in proc.stdout and "read from the cache" in proc.stdout
    its = [r["iter"] for r in metrics(workdir / "runs" / "dpo")]
    assert its == list(range(1, 51))

    beam = calmrl(
        "eval",
        "checkpoint=runs/dpo",
        "decode=implicit_q_beam",
        "decode.beam_width=2",
        "env.eval_episodes=4",
        "env.max_steps=4",
        "rollout.max_new_tokens=4",
        cwd=workdir,
    )
    report = json.loads(next((workdir / "runs" / "eval").glob("*/eval_report.json")).read_text())
    assert report["decode"]["name"] == "implicit_q_beam" and report["decode"]["beam_width"] == 2
    greedy = calmrl("eval", "checkpoint=runs/dpo", "env.eval_episodes=4", "env.max_steps=4", cwd=workdir)
    print("implicit-Q beam:", beam.stdout.strip().splitlines()[0])
    print("greedy:         ", greedy.stdout.strip().splitlines()[0])
    assert "implicit-Q beam search, width 2" in beam.stdout


def test_dpo_treg_runs_and_logs_the_regulariser(workdir):
    write_gridworld_pairs(workdir / "pairs.jsonl", seeds=range(10))
    calmrl(
        "train",
        "algo=dpo_treg",
        "data=pairs.jsonl",
        "run_name=treg",
        "trainer.total_iters=6",
        "trainer.eval_every=3",
        "algo.minibatch_size=8",
        *TINY,
        cwd=workdir,
    )
    rows = metrics(workdir / "runs" / "treg")
    assert all(0 < r["loss/treg_weight"] < 1 for r in rows)
    assert all("loss/treg_reg" in r for r in rows) and "eval/reward_margin" in rows[-1]


def test_preference_algo_without_data_fails_early(workdir):
    proc = calmrl("train", "algo=dpo", *TINY, cwd=workdir, check=False)
    assert proc.returncode == 2 and "set data=" in proc.stderr
    proc = calmrl("train", "algo=grpo", "data=x.jsonl", *TINY, cwd=workdir, check=False)
    assert proc.returncode == 2 and "read only by the preference algos" in proc.stderr


def test_dpo_and_dpo_treg_on_deepspeed_in_one_process_and_under_ray_match_torch_and_resume(workdir):
    """learner=deepspeed for the preference algos, as one rank in the trainer's process and as 2 ranks under
    cluster=ray: the first step's loss and rewards, and the held-out evaluation after it, are learner=torch's; a
    resumed run continues from DeepSpeed's own checkpoint state. 5 pairs a step over 2 ranks of 2-pair micro-batches:
    rank 0 trains 3 pairs in 2 micro-batches, rank 1 2 pairs and a zero-weight pass (ZeRO's collectives in step).
    Under Ray the ranks also score the reference cache, each its share of the pairs."""
    pytest.importorskip("ray", reason="cluster=ray needs the `ray` extra")
    write_gridworld_pairs(workdir / "pairs.jsonl", seeds=range(8))
    base = [
        "data=pairs.jsonl",
        "trainer.eval_every=1",
        "trainer.checkpoint_every=1",
        "cluster.num_threads=1",
        "algo.minibatch_size=5",
        "learner.micro_batch_size=4",
        *TINY,
    ]
    sweep = ["-m", "algo=dpo,dpo_treg"]
    placements = {"ds": ["learner=deepspeed"], "ray": ["learner=deepspeed", "cluster=ray"]}
    calmrl("train", *sweep, *base, "trainer.total_iters=1", "hydra.sweep.dir=runs/torch", cwd=workdir)
    for name, args in placements.items():
        calmrl("train", *sweep, *base, *args, "trainer.total_iters=1", f"hydra.sweep.dir=runs/{name}", cwd=workdir)
    for name, algo in ((n, a) for n in placements for a in ("dpo", "dpo_treg")):
        (job,) = (workdir / "runs" / name).glob(f"*-{algo}-*")
        ((got,),) = [metrics(job)]
        ((want,),) = [metrics(workdir / "runs" / "torch" / job.name)]
        trained = [k for k in want if k.startswith(("loss/", "reward/", "eval/"))]
        assert {"loss/dpo", "eval/reward_margin"} <= set(trained), (name, algo)
        assert sorted(trained) == sorted(k for k in got if k.startswith(("loss/", "reward/", "eval/"))), (name, algo)
        for key in trained:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (name, algo, key)
        assert got["loss/optimizer_steps"] == 1
        assert list(job.glob("checkpoints/step_*/deepspeed/state")), (name, algo)
    for name, args in placements.items():
        proc = calmrl(
            "train", *sweep, *base, *args, "trainer.total_iters=2", f"hydra.sweep.dir=runs/{name}", cwd=workdir
        )
        assert proc.stdout.count("from iteration 1") == 2, proc.stdout[-2000:]
        for job in (workdir / "runs" / name).glob("*-dpo*"):
            assert [r["iter"] for r in metrics(job)] == [1, 2], (name, job.name)
