"""`calmrl eval`: a run directory, a single checkpoint, overrides, and the errors."""

import json

from conftest import FAST, calmrl


def _report(out: str):
    path = out.strip().splitlines()[-1].removeprefix("report: ")
    return json.loads(open(path).read())


def test_eval_of_a_run_reuses_its_config_and_matches_its_final_eval(workdir):
    calmrl("train", *FAST, "trainer.total_iters=2", "env.eval_episodes=6", "run_name=ev", cwd=workdir)
    final = json.loads((workdir / "runs" / "ev" / "metrics.jsonl").read_text().splitlines()[-1])
    report = _report(calmrl("eval", "checkpoint=runs/ev", cwd=workdir).stdout)
    # the run's own env settings (6 episodes, 4 steps) were used, so the numbers are the trainer's final eval
    assert report["episodes"] == 6 and report["env"]["max_steps"] == 4
    assert report["success_rate"] == final["eval/success_rate"]
    assert report["episode_len"] == final["eval/episode_len"]
    assert "step 2" in report["source"] and len(report["per_episode"]) == 6


def test_eval_of_one_checkpoint_with_overrides(workdir):
    calmrl("train", *FAST, "trainer.total_iters=2", "trainer.checkpoint_every=1", "run_name=ev2", cwd=workdir)
    ckpt = workdir / "runs" / "ev2" / "checkpoints" / "step_00000001"
    report = _report(calmrl("eval", f"checkpoint={ckpt}", "env.eval_episodes=3", cwd=workdir).stdout)
    assert report["episodes"] == 3 and report["source"] == f"checkpoint {ckpt}"
    assert report["seeds"] == [report["env"]["eval_seed_offset"] + i for i in range(3)]


def test_eval_errors_are_one_line(workdir):
    proc = calmrl("eval", cwd=workdir, check=False)
    assert proc.returncode == 2 and "needs checkpoint=" in proc.stderr
    proc = calmrl("eval", "checkpoint=nowhere", cwd=workdir, check=False)
    assert proc.returncode == 2 and "no valid checkpoint there" in proc.stderr
    proc = calmrl("eval", "checkpoint=x", "rollout.eval_temperature=-1", cwd=workdir, check=False)
    assert proc.returncode == 2 and "rollout.eval_temperature must be >= 0" in proc.stderr
