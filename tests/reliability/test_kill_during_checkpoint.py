"""SIGKILL while `calmrl train` is inside a checkpoint write, then `resume=auto`.

Deterministic without a hook in calmrl: the test watches the checkpoint directory, and when the phase it
wants appears (the temp dir exists; the weights are in it) it SIGSTOPs the trainer, checks on the frozen
process that the write is really under way (temp dir present, no manifest yet), and only then SIGKILLs it.
If the stop landed just after the write (the window is short), the trainer is continued and the next
checkpoint is tried. After each kill the resumed run must start from the last complete checkpoint, ignore
and then clean the half-written temp dir, and continue the metrics with no iteration lost or counted twice.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from reliability_support import ENV, FAST, calmrl, command, records

from calmrl.learners.checkpoint import CheckpointManager

TOTAL = 6
ARGS = ["train", *FAST, f"trainer.total_iters={TOTAL}", "trainer.checkpoint_every=1", "trainer.keep_last=2"]
TMP = re.compile(r"^\.step_(\d+)\.tmp-(\d+)$")


def _writing(ckpts: Path, pid: int, min_step: int, inside: str | None) -> Path | None:
    """The temp dir of a write in progress by `pid` for a step >= min_step (with `inside` already written)."""
    try:
        names = os.listdir(ckpts)
    except FileNotFoundError:
        return None
    for name in names:
        m = TMP.match(name)
        if m and int(m.group(2)) == pid and int(m.group(1)) >= min_step:
            tmp = ckpts / name
            if (inside is None or (tmp / inside).exists()) and not (tmp / "manifest.json").exists():
                return tmp
    return None


def kill_inside_write(cwd: Path, run: str, min_step: int, inside: str | None) -> Path:
    """Run training and SIGKILL it in the middle of writing a checkpoint; returns the temp dir it left."""
    proc = subprocess.Popen(
        command(*ARGS, f"run_name={run}"),
        cwd=cwd,
        env={**os.environ, **ENV},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = cwd / "runs" / run / "checkpoints"
    try:
        while proc.poll() is None:  # no deadline: a slow machine takes longer; pytest's timeout guards a hang
            if _writing(ckpts, proc.pid, min_step, inside) is None:
                time.sleep(0.0005)
                continue
            proc.send_signal(signal.SIGSTOP)
            tmp = _writing(ckpts, proc.pid, min_step, inside)  # re-checked on the frozen process
            if tmp is not None:
                proc.kill()
                proc.wait()
                return tmp
            proc.send_signal(signal.SIGCONT)  # the write finished before the stop: try the next one
        raise AssertionError(f"no checkpoint write caught (exit code {proc.poll()})")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_inside_checkpoint_write_then_resume(tmp_path):
    run = tmp_path / "runs" / "killed"
    kills = []
    min_step = 2  # so that a complete checkpoint exists before the first kill
    # kill 1: as soon as the temp dir exists; kill 2 (in the resumed run): once the weights are written into it
    for inside in (None, "policy/model.safetensors"):
        tmp = kill_inside_write(tmp_path, "killed", min_step, inside)
        step = int(TMP.match(tmp.name).group(1))
        kills.append(step)
        assert tmp.is_dir() and not (run / "checkpoints" / f"step_{step:08d}").exists()
        latest = CheckpointManager(run / "checkpoints").latest()
        assert latest is not None and latest.step == step - 1  # the previous checkpoint is intact
        # metrics are logged after the checkpoint: iteration `step` never reached the file; after the first
        # resume, the records continue exactly where the last complete checkpoint left them
        assert [m["iter"] for m in records(run / "metrics.jsonl")] == list(range(1, step))
        min_step = step + 1
    stale = sorted(p.name for p in (run / "checkpoints").iterdir() if TMP.match(p.name))
    assert len(stale) == 1  # the first kill's temp dir was cleaned by the resumed run's first save

    kept = records(run / "metrics.jsonl")
    out = calmrl(*ARGS, "run_name=killed", cwd=tmp_path)
    assert f"from iteration {kills[-1] - 1} (step_{kills[-1] - 1:08d})" in out.stdout
    after = records(run / "metrics.jsonl")
    assert [m["iter"] for m in after] == list(range(1, TOTAL + 1))  # none lost, none counted twice
    assert after[: len(kept)] == kept  # the finished iterations' records are untouched
    leftovers = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert leftovers == [f"step_{TOTAL - 1:08d}", f"step_{TOTAL:08d}"]  # temp dirs cleaned, keep_last=2
    assert CheckpointManager(run / "checkpoints").latest().step == TOTAL
