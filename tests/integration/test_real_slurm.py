"""Through a real SLURM: `scripts/local_slurm.sh` starts munged, slurmctld and two slurmd (node1, node2) on this
machine, all on loopback, and every job here goes through sbatch: a Hydra sweep (hydra/launcher=slurm), a job
cancelled mid-run and resubmitted (scripts/slurm_train.sbatch), the multi-node Ray bring-up with Ray's token
authentication on and off, and a two-node `cluster=ray learner=deepspeed` run.

Skipped, saying why, where SLURM is not installed (`scripts/local_slurm.sh install`; .ci/run installs it) or the
cluster cannot start here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, calmrl

pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason='needs the slurm extra: pip install "calmrl[slurm]"'
)
pytest.importorskip("ray", reason='needs the ray extra: pip install "calmrl[ray]"')

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local_slurm.sh"
NODES = ["node1", "node2"]
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
SLURM_LAUNCHER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a running two-node cluster, stopped after this module's tests."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol") if not shutil.which(c, path=search)]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} not found): run scripts/local_slurm.sh install")
    state = Path("/tmp") / f"calmrl-slurm-test-{os.getpid()}"  # short: munge's socket path must fit in 108 bytes
    env = {**os.environ, "PATH": search, "CALMRL_SLURM_DIR": str(state)}
    up = subprocess.run(["bash", str(SCRIPT), "up"], env=env, capture_output=True, text=True, timeout=180)
    try:
        if up.returncode != 0:
            pytest.skip(f"the local SLURM cluster did not start here: {(up.stderr or up.stdout).strip()[-600:]}")
        conf = str(state / "slurm.conf")
        os.environ["SLURM_CONF"] = conf  # for the calmrl subprocesses and every job (sbatch passes env on)
        yield conf
    finally:
        os.environ.pop("SLURM_CONF", None)
        subprocess.run(["bash", str(SCRIPT), "down"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def sbatch(*args: str, env: dict | None = None) -> str:
    out = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=60, env=env or os.environ
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def job_state(job_id: str) -> str:
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=60)
    fields = dict(f.split("=", 1) for f in out.stdout.split() if "=" in f)
    return fields.get("JobState", "UNKNOWN")


def wait_for_job(job_id: str, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := job_state(job_id)) not in ENDED:
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout_s:.0f} s"
        time.sleep(0.5)
    return state


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def without_venv_on_path() -> dict:
    """This environment with the interpreter's bin directory off PATH: calmrl run by its path from a venv that is
    not activated, as a job script may do."""
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin]
    return {**os.environ, "PATH": os.pathsep.join(path), "HF_HUB_OFFLINE": "1"}


def test_sweep_through_sbatch_trains_every_job(slurm, tmp_path):
    sweep = tmp_path / "sweep"
    proc = calmrl(
        "train", "-m", *SLURM_LAUNCHER, "hydra.launcher.cpus_per_task=1", "seed=0,1", *FAST,
        "trainer.total_iters=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0-gridworld-grpo-seed0", "1-gridworld-grpo-seed1"], proc.stdout + proc.stderr
    for job in jobs:
        assert [r["iter"] for r in records(sweep / job / "metrics.jsonl")] == [1, 2]
        assert (sweep / job / "checkpoints" / "step_00000002").is_dir()
    # both ran as tasks of one SLURM array job, on the cluster's nodes
    logs = sorted((sweep / ".submitit").glob("*_*/*_log.out"))
    assert len(logs) == 2, sorted(str(p) for p in (sweep / ".submitit").rglob("*"))
    array_id = logs[0].parent.name.split("_")[0]
    assert [wait_for_job(f"{array_id}_{k}", timeout_s=60) for k in (0, 1)] == ["COMPLETED", "COMPLETED"]
    # without accounting submitit's watcher fails `sacct` at every poll; calmrl says so once
    said = (proc.stdout + proc.stderr).count("Bypassing sacct error")
    assert said <= 3, said  # one record, through at most three handlers (submitit's two and Hydra's)


def test_job_cancelled_mid_run_resumes_when_resubmitted(slurm, tmp_path):
    """scripts/slurm_train.sbatch, as a user submits it: scancel'd after a checkpoint, the same command again
    continues from it (what a requeued or time-limited job does)."""
    run = tmp_path / "run"
    env = {**os.environ, "CALMRL_HOME": str(REPO), "CALMRL_VENV": sys.prefix}
    args = [
        "--gpus-per-node=0", "--cpus-per-task=1", "--time=20", f"--output={tmp_path}/slurm-%j.out",
        str(REPO / "scripts" / "slurm_train.sbatch"), *FAST, "trainer.total_iters=24",
        "trainer.checkpoint_every=2", f"hydra.run.dir={run}",
    ]  # fmt: skip
    first = sbatch(*args, env=env)
    # cancel the job once two checkpoints exist; 20 iterations (~15 s here) are left to run by then. (Not
    # `scancel --signal=STOP` first: SLURM may then mark the whole job STOPPED, and a stopped job ignores scancel.)
    deadline = time.monotonic() + 600
    while not any(p.name >= "step_00000004" for p in (run / "checkpoints").glob("step_*")):
        assert job_state(first) not in ENDED, (tmp_path / f"slurm-{first}.out").read_text()
        assert time.monotonic() < deadline, "no second checkpoint within 600 s"
        time.sleep(0.1)
    subprocess.run(["scancel", first], check=True, timeout=60)
    assert wait_for_job(first) == "CANCELLED"
    before = records(run / "metrics.jsonl")
    assert before and before[-1]["iter"] < 24, "the job finished before it could be cancelled"

    second = sbatch(*args, env=env)
    assert wait_for_job(second) == "COMPLETED", (tmp_path / f"slurm-{second}.out").read_text()
    out = (tmp_path / f"slurm-{second}.out").read_text()
    resumed_from = int(out.split("from iteration ")[1].split()[0])
    assert resumed_from >= 4 and resumed_from % 2 == 0
    after = records(run / "metrics.jsonl")
    assert [r["iter"] for r in after] == list(range(1, 25))  # none lost, none counted twice
    assert after[:resumed_from] == before[:resumed_from]


@pytest.mark.parametrize("auth_mode", [None, "disabled"], ids=["token-auth", "no-auth"])
def test_two_node_ray_bringup(slurm, tmp_path, auth_mode):
    """Node 0 starts the head, node 1 joins it; one task runs on each node (STRICT_SPREAD). HOME holds a Ray token
    as any earlier local ray.init() leaves one: Ray 2.60's head then turned authentication on by itself and the
    joining node was refused (InvalidAuthToken). The venv is off PATH: the ray CLI is found beside the interpreter."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a-token-left-by-an-earlier-ray-init")
    env = {**without_venv_on_path(), "HOME": str(home)}
    env.pop("RAY_AUTH_MODE", None)
    if auth_mode:
        env["RAY_AUTH_MODE"] = auth_mode
    run_dir = tmp_path / "run"
    probe = Path(__file__).with_name("slurm_ray_bringup.py")
    job = sbatch(
        "-N2", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=10", f"--output={tmp_path}/slurm-%j.out",
        "--wrap", f"srun --kill-on-bad-exit=1 {sys.executable} {probe} {run_dir}", env=env,
    )  # fmt: skip
    state = wait_for_job(job, timeout_s=300)
    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", out
    report = json.loads(out.split("BRINGUP ", 1)[1].splitlines()[0])
    ips = sorted(socket.gethostbyname(n) for n in NODES)
    assert report["nodes"] == ips, out  # each node under the address its name resolves to
    assert report["ran_on"] == ips, out
    if auth_mode == "disabled":
        assert report["auth_mode"] == "disabled" and report["token_path"] is None
    else:  # a token of this job's own, in the run directory, removed when the job ends
        assert report["auth_mode"] == "token"
        assert Path(report["token_path"]).parent == run_dir / ".ray"
        assert not Path(report["token_path"]).exists()


@pytest.mark.slow
def test_two_node_ray_deepspeed_job_trains(slurm, tmp_path):
    """The command of a multi-node run: `hydra.launcher.nodes=2 cluster=ray learner=deepspeed`. The two learner
    ranks and the rollout worker need 3 CPUs (shaper=none: no reward worker) and each node offers 2, so the placement
    spans both nodes; the ranks' DeepSpeed world (gloo) rendezvous across them."""
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [
            sys.executable, "-m", "calmrl", "train", "-m", *SLURM_LAUNCHER, "hydra.launcher.nodes=2",
            "hydra.launcher.cpus_per_task=2", "cluster=ray", "learner=deepspeed", *FAST, "trainer.total_iters=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path, env=without_venv_on_path(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    logs = "\n".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs[-6000:]
    run = sweep / "0-gridworld-grpo-seed0"
    assert [r["iter"] for r in records(run / "metrics.jsonl")] == [1]
    assert (run / "checkpoints" / "step_00000001" / "deepspeed").is_dir()
    placement = (run / "train.log").read_text().split("Ray placement: ")[1].splitlines()[0]
    used = {ip.strip() for part in placement.split(";") for ip in part.split(" on ")[1].split(",")}
    assert used == {socket.gethostbyname(n) for n in NODES}, placement
    assert "joins the Ray head" in logs and not list((run / ".ray").glob("auth_token.*"))
