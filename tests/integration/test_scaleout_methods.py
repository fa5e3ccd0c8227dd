"""Issue 17: the methods with more than advantages (a shaper's dense rewards, an episode program of their own,
state across iterations) train under `cluster=ray learner=deepspeed` as under `cluster=local learner=torch`, and
resume there.

Each case is one multirun per placement (a local Ray cluster starts once per command and its jobs share it; it
starts again, bigger, for a job whose placement does not fit: archer's state worker after pure's 4 bundles). Why
the first iteration must match: test_scaleout.py's docstring (one rollout worker continues the driver's RNG
stream). What runs where under Ray: the episodes, with the method's episode program (brpo's budgeted thinking),
on the rollout worker; the shapers on the reward worker; ArCHer's utterance critic and replay buffer on the state
worker (its initial weights, and the policy's samples for its V targets, drawn from the driver's RNG stream),
MA-PPO's parse table on the driver; the policy loss on 2 DeepSpeed ranks, and a critic method's value model
there too. So every rollout / reward / credit metric is equal, and the policy and critic losses are equal to the
float rounding of 2 ranks against one process (bounds as in test_scaleout.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST, calmrl
from test_pure_brpo_smoke import build_prm

pytest.importorskip("ray", reason="cluster=ray needs the `ray` extra")
pytest.importorskip("deepspeed", reason="learner=deepspeed needs the `deepspeed` extra")

DATA = Path(__file__).resolve().parents[1] / "data" / "math" / "gsm8k.jsonl"
COMMON = ["trainer.checkpoint_every=1", "cluster.num_threads=1"]
GRIDWORLD = [*FAST, "env.key=true", "env.max_steps=6"]
MATH = [
    *FAST,
    "env=math",
    f"env.data_path={DATA}",
    "rollout.num_groups=1",
    "rollout.group_size=4",
    "env.eval_episodes=2",
    "policy.max_new_tokens=8",  # brpo: budget 8, cut at 4 budgets of 2 tokens
]
RAY = ["cluster=ray", "learner=deepspeed"]
EXACT = ("rollout/", "reward/", "credit/", "judge/")  # computed from the sampled episodes alone
TRAINED = ("loss/", "critic/")  # the ranks' updates (ArCHer's critic/ is the state worker's, held to the same bound)
LOSS_ABS, REL = 1e-6, 1e-5


def job_metrics(sweep: Path) -> dict[str, list[dict]]:
    """job directory name ('<job number>-<env>-<algo>-seed<n>') -> its metrics rows, for every job of a multirun."""
    out = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
        rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines() if line.strip()]
        out[job.name] = rows
    return out


def train(cwd: Path, sweep: str, *args: str, iters: int = 1):
    return calmrl(
        "train", "-m", *args, *COMMON, f"trainer.total_iters={iters}", f"hydra.sweep.dir={sweep}", cwd=cwd, timeout=900
    )


def placement(job: Path) -> str:
    """The 'Ray placement: ...' line of a job's train.log."""
    return (job / "train.log").read_text().split("Ray placement: ")[1].splitlines()[0]


def check_ray_matches_local_and_resumes(cwd: Path, name: str, args: list[str], jobs: int, rounded=None):
    """`rounded`: algo name -> metric prefixes that job computes from the ranks' numbers, so equal only to
    rounding (held to the TRAINED bound instead of exactly)."""
    train(cwd, f"runs/{name}-local", *args)
    train(cwd, f"runs/{name}-ray", *args, *RAY)
    local, ray = job_metrics(cwd / "runs" / f"{name}-local"), job_metrics(cwd / "runs" / f"{name}-ray")
    for job in ray:  # only a state that holds a model (ArCHer's critic) leaves the driver
        assert ("; state worker on" in placement(cwd / "runs" / f"{name}-ray" / job)) == ("archer" in job), job
    assert sorted(local) == sorted(ray) and len(ray) == jobs, (sorted(local), sorted(ray))
    for job in ray:
        (got,), (want,) = ray[job], local[job]
        near = next((tuple(v) for algo, v in (rounded or {}).items() if f"-{algo}-" in job), ())
        assert sorted(k for k in want if k.startswith(EXACT)) == sorted(k for k in got if k.startswith(EXACT)), job
        exact = [k for k in want if k.startswith(EXACT) and not (near and k.startswith(near))]
        for key in exact:
            assert got[key] == want[key], (job, key)  # the same episodes, shaped and credited the same way
        for key in (k for k in want if k.startswith((*TRAINED, *near))):
            bound = LOSS_ABS if key == "loss/policy" else REL * abs(want[key]) + LOSS_ABS
            assert got[key] == pytest.approx(want[key], abs=bound), (job, key)
        assert got["rollout/env_errors"] == 0 and got["loss/skipped_steps"] == 0, job
    # resume on the Ray path: every job continues from its iteration-1 checkpoint (an algo's state included:
    # ArCHer refuses a checkpoint without one)
    proc = train(cwd, f"runs/{name}-ray", *args, *RAY, iters=2)
    assert proc.stdout.count("from iteration 1") == jobs, proc.stdout[-3000:]
    for job, rows in job_metrics(cwd / "runs" / f"{name}-ray").items():
        assert [r["iter"] for r in rows] == [1, 2], job


def test_shapers_under_ray_match_local_and_resume(workdir):
    """shaper=calm (oracle judge: a step bonus per subgoal) and shaper=treg (token rewards from the reference)."""
    check_ray_matches_local_and_resumes(workdir, "shapers", [*GRIDWORLD, "shaper=calm,treg"], jobs=2)


def test_the_other_estimators_under_ray_match_local_and_resume(workdir):
    """algo=rloo and algo=gigpo (advantages from the episodes alone) and algo=reinforce_pp, whose KL token reward
    reads the reference log-probs the ranks compute on their shards: its credit/ metrics equal to rounding."""
    args = [*GRIDWORLD, "algo=rloo,reinforce_pp,gigpo"]
    check_ray_matches_local_and_resumes(workdir, "estimators", args, jobs=3, rounded={"reinforce_pp": ("credit/",)})


def test_implicit_q_under_ray_matches_local_and_resumes(workdir):
    """shaper=implicit_q: token rewards beta log pi/pi_ref, with pi a policy one update away from the run's start
    (a checkpoint of the same tiny policy, so the vocabularies agree)."""
    calmrl("train", *GRIDWORLD, "trainer.total_iters=1", "run_name=dpo_stand_in", cwd=workdir)
    trained = workdir / "runs" / "dpo_stand_in" / "checkpoints" / "step_00000001" / "policy"
    args = [*GRIDWORLD, "shaper=implicit_q", f"shaper.policy_path={trained}", "shaper.beta=1.0"]
    check_ray_matches_local_and_resumes(workdir, "implicit_q", args, jobs=1)


def test_own_rollout_stateful_and_critic_algos_with_a_prm_under_ray_match_local_and_resume(workdir):
    """On env=math, shaped by shaper=prm_minform (a PRM model loaded from shaper.prm.path scores every step):
    algo=pure (its min-form credit), algo=brpo (budgeted thinking + summaries, played on the rollout worker),
    algo=archer (its utterance critic and replay buffer kept across iterations, on the state worker), and the critic
    methods algo=ppo and algo=ma_ppo (the value model trained on the DeepSpeed ranks, its values computed there;
    ma_ppo's macro-action table kept on the driver)."""
    prm = build_prm(workdir / "prm")
    args = [*MATH, "algo=pure,brpo,archer,ppo,ma_ppo", "shaper=prm_minform", f"shaper.prm.path={prm}"]
    check_ray_matches_local_and_resumes(workdir, "math", args, jobs=5)
