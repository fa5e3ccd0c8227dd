"""The train command end to end: a short run, a sweep, resume after SIGKILL, corrupt checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import FAST, calmrl


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_short_run_writes_metrics_and_checkpoints(workdir):
    out = calmrl("train", *FAST, "trainer.total_iters=3", "trainer.checkpoint_every=2", "run_name=short", cwd=workdir)
    run = workdir / "runs" / "short"
    records = _records(run / "metrics.jsonl")
    assert [r["iter"] for r in records] == [1, 2, 3]
    for key in (
        "rollout/success_rate",
        "credit/adv_mean",
        "loss/policy",
        "perf/generate_s",
        "perf/update_s",
        "eval/success_rate",
    ):
        assert key in records[-1], key
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == [
        "step_00000002",
        "step_00000003",
    ]
    assert "untrained" in out.stdout and "metrics:" in out.stdout and str(run / "metrics.jsonl") in out.stdout


def test_multirun_sweep_runs_two_jobs(workdir):
    calmrl("train", "-m", "seed=0,1", "trainer.total_iters=2", *FAST, cwd=workdir)
    sweeps = list((workdir / "runs" / "multirun").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0-gridworld-grpo-seed0", "1-gridworld-grpo-seed1"]
    for job in jobs:
        assert len(_records(sweeps[0] / job / "metrics.jsonl")) == 2


def test_resume_after_sigkill_continues_from_last_checkpoint(workdir):
    args = ["train", *FAST, "trainer.total_iters=12", "trainer.checkpoint_every=2", "run_name=killed"]
    run = workdir / "runs" / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "calmrl", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # kill once at least two checkpoints exist, mid-training: no deadline (a slow machine just takes longer;
    # pytest's timeout guards a hang), and the trainer is frozen first so it cannot finish between look and kill
    while proc.poll() is None:
        ckpts = list((run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else []
        if any(p.name >= "step_00000004" for p in ckpts):
            proc.send_signal(signal.SIGSTOP)
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = _records(run / "metrics.jsonl")
    assert before and before[-1]["iter"] < 12, "the run finished before it could be killed"

    out = calmrl(*args, cwd=workdir)
    assert "resuming" in out.stdout
    resumed_from = int(out.stdout.split("from iteration ")[1].split()[0])
    assert resumed_from >= 4 and resumed_from % 2 == 0
    after = _records(run / "metrics.jsonl")
    assert [r["iter"] for r in after] == list(range(1, 13))  # no iteration lost, none counted twice
    assert after[:resumed_from] == before[:resumed_from]  # finished iterations kept as they were


def test_resume_is_exact(workdir):
    """Iterations replayed after a resume equal those of an uninterrupted run (step counter and RNG restored)."""
    common = [*FAST, "trainer.checkpoint_every=2"]
    calmrl("train", *common, "trainer.total_iters=4", "run_name=straight", cwd=workdir)
    calmrl("train", *common, "trainer.total_iters=2", "run_name=pieces", cwd=workdir)
    calmrl("train", *common, "trainer.total_iters=4", "run_name=pieces", cwd=workdir)
    straight = _records(workdir / "runs" / "straight" / "metrics.jsonl")
    pieces = _records(workdir / "runs" / "pieces" / "metrics.jsonl")
    # timings differ, and the 2-iteration run evaluates at its end; every training metric must match
    drop = lambda r: {k: v for k, v in r.items() if not k.startswith(("perf/", "eval/"))}  # noqa: E731
    assert [drop(r) for r in pieces] == [drop(r) for r in straight]


def test_corrupt_latest_checkpoint_falls_back_to_previous(workdir):
    args = ["train", *FAST, "trainer.checkpoint_every=1", "run_name=corrupt"]
    calmrl(*args, "trainer.total_iters=2", cwd=workdir)
    latest = workdir / "runs" / "corrupt" / "checkpoints" / "step_00000002" / "policy" / "model.safetensors"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    out = calmrl(*args, "trainer.total_iters=3", cwd=workdir)
    assert "from iteration 1" in out.stdout
    assert [r["iter"] for r in _records(workdir / "runs" / "corrupt" / "metrics.jsonl")] == [1, 2, 3]


def test_resume_never_refuses_to_overwrite(workdir):
    args = ["train", *FAST, "trainer.total_iters=1", "run_name=keep"]
    calmrl(*args, cwd=workdir)
    proc = calmrl(*args, "resume=never", cwd=workdir, check=False)
    assert proc.returncode == 2 and "already holds checkpoints" in proc.stderr
    assert (workdir / "runs" / "keep" / "checkpoints" / "step_00000001").is_dir()


def test_every_credit_algo_trains_in_one_sweep(workdir):
    """`calmrl train -m algo=grpo,rloo,reinforce_pp,ppo,gigpo` is one valid sweep on the default env."""
    algos = ["grpo", "rloo", "reinforce_pp", "ppo", "gigpo"]
    calmrl("train", "-m", f"algo={','.join(algos)}", "trainer.total_iters=2", *FAST, cwd=workdir)
    (sweep,) = list((workdir / "runs" / "multirun").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [f"{i}-gridworld-{a}-seed0" for i, a in enumerate(algos)]
    for job in jobs:
        last = _records(sweep / job / "metrics.jsonl")[-1]
        assert last["iter"] == 2 and last["loss/skipped_steps"] == 0
    assert "critic/value_loss" in _records(sweep / "3-gridworld-ppo-seed0" / "metrics.jsonl")[-1]


def test_all_checkpoints_corrupt_refuses_and_keeps_metrics(workdir):
    args = ["train", *FAST, "trainer.checkpoint_every=1", "trainer.keep_last=1", "run_name=allbad"]
    calmrl(*args, "trainer.total_iters=1", cwd=workdir)
    run = workdir / "runs" / "allbad"
    (run / "checkpoints" / "step_00000001" / "manifest.json").unlink()
    metrics_before = (run / "metrics.jsonl").read_text()
    proc = calmrl(*args, "trainer.total_iters=2", cwd=workdir, check=False)
    assert proc.returncode == 2 and "is valid" in proc.stderr and "nothing was overwritten" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == metrics_before


def test_wandb_logger_is_offline_without_a_key(workdir):
    env_key = os.environ.pop("WANDB_API_KEY", None)
    try:
        calmrl("train", *FAST, "trainer.total_iters=2", "logger=wandb", "run_name=wb", cwd=workdir)
    finally:
        if env_key is not None:
            os.environ["WANDB_API_KEY"] = env_key
    runs = list((workdir / "runs" / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert len(_records(workdir / "runs" / "wb" / "metrics.jsonl")) == 2  # the JSONL file is always written


def test_training_with_process_env_pool(workdir):
    """env.pool=process: every env in its own worker process; results equal the inline pool's."""
    common = [*FAST, "trainer.total_iters=2", "env.timeout_s=30"]
    calmrl("train", *common, "env.pool=process", "run_name=proc", cwd=workdir)
    calmrl("train", *common, "env.pool=inline", "run_name=inl", cwd=workdir)
    proc = _records(workdir / "runs" / "proc" / "metrics.jsonl")
    inline = _records(workdir / "runs" / "inl" / "metrics.jsonl")
    for a, b in zip(proc, inline, strict=True):
        assert a["rollout/episode_return"] == b["rollout/episode_return"]
        assert a["rollout/env_errors"] == 0
