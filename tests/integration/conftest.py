"""Helpers to run the `calmrl` CLI as a subprocess, the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# A small, fast configuration for CLI tests (the default run's learning is tested separately).
FAST = [
    "policy.hidden_size=32",
    "policy.intermediate_size=64",
    "policy.num_layers=1",
    "policy.num_heads=2",
    "policy.num_kv_heads=1",
    "rollout.num_groups=2",
    "rollout.group_size=4",
    "env.eval_episodes=4",
    "env.max_steps=4",
    "logger=jsonl",
    "trainer.eval_every=0",
]


def calmrl(*args: str, cwd: Path, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "calmrl", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"calmrl {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture()
def workdir(tmp_path):
    return tmp_path
