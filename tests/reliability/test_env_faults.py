"""Envs that raise at reset or step, or hang: the run finishes, the broken trajectories are flagged and
dropped, and `rollout/env_errors` counts them.

The faulty envs below are registered by this module. The tests run this very file as the `calmrl` CLI
(see the bottom), so the training subprocess has them too; no test hook lives in calmrl itself.

Which task seeds fail is a pure function of the seed (seed % 4), and the trainer's task seeds are a pure
function of (seed, iteration), so every test knows which trajectories must fail.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from reliability_support import FAST, calmrl, records

from calmrl.envs import ENVS
from calmrl.envs.base import Observation, StepResult
from calmrl.runs import train_seeds

THIS = Path(__file__).resolve()
RAISE_AT_RESET, RAISE_AT_STEP, HANG_AT_STEP, HEALTHY = range(4)


class FaultyEnv:
    """A counting game that accepts any action (no admissible list, so every non-empty response reaches
    `step`); task seed s behaves as `s % 4`: raise at reset, raise at the first step, hang at the first step,
    or play normally (the hang is only armed where a process pool can time it out)."""

    hangs = False

    def __init__(self, max_steps: int = 4, **_gridworld_keys):
        self.max_steps = max_steps
        self.task = "say anything ."

    @staticmethod
    def vocabulary(size: int = 0) -> list[str]:
        return ["say", "anything", "turn", "north", "south", "east", "west", "."]

    def reset(self, seed: int) -> Observation:
        self.mode, self.n = seed % 4, 0
        if self.mode == RAISE_AT_RESET:
            raise OSError(f"injected reset fault (seed {seed})")
        return Observation("turn 0 .", "0")

    def step(self, action: str) -> StepResult:
        if self.mode == RAISE_AT_STEP:
            raise ValueError("injected step fault")
        if self.mode == HANG_AT_STEP and self.hangs:
            time.sleep(600)  # the process pool's timeout must end this trajectory, not the test
        self.n += 1
        done = self.n >= self.max_steps
        return StepResult(Observation(f"turn {self.n} .", str(self.n)), float(done), done, {"success": done})


class HangingEnv(FaultyEnv):
    hangs = True


for _name, _cls in (("test_faulty", FaultyEnv), ("test_hanging", HangingEnv)):
    if _name not in ENVS:
        ENVS.register(_name)(_cls)


def faulty_seed_counts(seed: int, iters: int, num_groups: int = 2) -> list[dict[int, int]]:
    """Per iteration: {fault mode: number of task seeds with that mode}."""
    out = []
    for it in range(1, iters + 1):
        modes = [s % 4 for s in train_seeds(seed, it, num_groups, 1_000_000_000)]
        out.append({m: modes.count(m) for m in range(4)})
    return out


def _run(workdir: Path, env: str, pool: str, seed: int, iters: int) -> tuple[list[dict], str]:
    args = [
        "train",
        *FAST,
        f"env.name={env}",
        f"env.pool={pool}",
        "env.timeout_s=3",
        f"seed={seed}",
        f"trainer.total_iters={iters}",
        "trainer.checkpoint_every=1",
        f"run_name={env}-{pool}",
    ]
    # below the 600 s a hanging env sleeps: a run that finishes has killed its hung workers, not waited for them
    proc = calmrl(*args, cwd=workdir, script=THIS, timeout=500)
    run = workdir / "runs" / f"{env}-{pool}"
    return records(run / "metrics.jsonl"), proc.stdout + proc.stderr + (run / "train.log").read_text()


def _check(metrics: list[dict], log: str, counts: list[dict[int, int]], step_modes: tuple[int, ...]) -> None:
    group = 4
    assert [m["iter"] for m in metrics] == list(range(1, len(counts) + 1))  # the run finished
    step_faults = 0
    for m, c in zip(metrics, counts, strict=True):
        at_reset = group * c[RAISE_AT_RESET]
        at_step = group * sum(c[k] for k in step_modes)
        # a trajectory whose every response was empty never reached `step`, so step faults are an upper bound
        assert at_reset <= m["rollout/env_errors"] <= at_reset + at_step, (m, c)
        step_faults += m["rollout/env_errors"] - at_reset
        if c[HEALTHY] == 0 and m["rollout/env_errors"] == group * sum(c.values()):
            assert m["perf/steps"] == 0 and m["loss/optimizer_steps"] == 0  # nothing left to learn from
        else:
            assert m["loss/optimizer_steps"] >= 1 and m["perf/steps"] > 0
    assert step_faults > 0, "no step fault was exercised"
    assert "failed at reset" in log and "injected reset fault" in log
    assert "failed at step" in log


def test_env_raising_at_reset_or_step_inline_pool(tmp_path):
    seed, iters = 3, 3  # iteration 1: a reset fault and a step fault (every trajectory fails); then mostly healthy
    counts = faulty_seed_counts(seed, iters)
    assert sum(c[RAISE_AT_RESET] for c in counts) and sum(c[RAISE_AT_STEP] for c in counts)
    metrics, log = _run(tmp_path, "test_faulty", "inline", seed, iters)
    _check(metrics, log, counts, step_modes=(RAISE_AT_STEP,))
    assert "ValueError" in log and "injected step fault" in log


def test_env_raising_or_hanging_process_pool(tmp_path):
    # seed 0: iteration 1 = step fault + healthy; 2 = reset fault + hang (every trajectory fails);
    # 3 = step fault + reset fault. The eval seeds (1e9 + k) hit every mode as well.
    seed, iters = 0, 3
    counts = faulty_seed_counts(seed, iters)
    assert counts[1][RAISE_AT_RESET] + counts[1][HANG_AT_STEP] == 2
    metrics, log = _run(tmp_path, "test_hanging", "process", seed, iters)  # finishing at all: hangs were cut
    _check(metrics, log, counts, step_modes=(RAISE_AT_STEP, HANG_AT_STEP))
    assert "EnvTimeout" in log and "within 3 s" in log


if __name__ == "__main__":  # this module as the CLI, with the envs above registered
    from calmrl.cli import main

    main(sys.argv[1:])
