"""Where does one training iteration of the default run spend its time?

Builds the embedded default (`calmrl train` with no overrides, or with the overrides given on the
command line), runs a few warm-up iterations and then N measured ones, and prints each stage's mean
seconds and its share of the whole iteration (the baseline every row is divided by):

    python benchmarks/iteration_breakdown.py                  # default run, 10 measured iterations
    python benchmarks/iteration_breakdown.py iters=20 rollout.num_groups=16
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from calmrl.cli import CONFIG_DIR, _quiet_libraries
    from calmrl.config import validate

    measured = 10
    overrides = []
    for arg in argv:
        if arg.startswith("iters="):
            measured = int(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    _quiet_libraries()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["run_name=benchmark", "logger=jsonl", "trainer.eval_every=0", *overrides])
    validate(cfg)

    from calmrl.logging import MetricsLogger
    from calmrl.loops import build_trainer

    warmup = 2
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        logger = MetricsLogger(cfg.logger, Path(tmp), warmup + measured, 0, None, {})
        logger.print_table = lambda *a, **k: None  # keep the benchmark's own output readable
        stages = {
            "generation": [],
            "env": [],
            "rollout bookkeeping": [],
            "credit": [],
            "update": [],
            "logging": [],
            "iteration": [],
        }
        devnull = open(os.devnull, "w")
        for it in range(1, warmup + measured + 1):
            t0 = time.perf_counter()
            m = trainer.train_iteration(it)
            t1 = time.perf_counter()
            stdout, sys.stdout = sys.stdout, devnull
            try:
                logger.log(it, m)
            finally:
                sys.stdout = stdout
            t2 = time.perf_counter()
            if it <= warmup:
                continue
            stages["generation"].append(m["perf/generate_s"])
            stages["env"].append(m["perf/env_s"])
            stages["rollout bookkeeping"].append(m["perf/rollout_other_s"])
            stages["credit"].append(m["perf/credit_s"])
            stages["update"].append(m["perf/update_s"])
            stages["logging"].append(t2 - t1)
            stages["iteration"].append(t2 - t0)
        logger.close()

    mean = {k: sum(v) / len(v) for k, v in stages.items()}
    total = mean["iteration"]
    rows = cfg.rollout.num_groups * cfg.rollout.group_size
    print(
        f"default run: env={cfg.env.name} policy={cfg.policy.name} algo={cfg.algo.name} "
        f"({cfg.rollout.num_groups} groups x {cfg.rollout.group_size} = {rows} episodes per iteration), "
        f"{measured} measured iterations after {warmup} warm-up"
    )
    print(f"{'stage':<22}{'mean s':>10}{'share of iteration':>22}")
    for name, value in mean.items():
        if name != "iteration":
            print(f"{name:<22}{value:>10.4f}{value / total:>21.1%}")
    print(f"{'iteration (baseline)':<22}{total:>10.4f}{1.0:>21.1%}")


if __name__ == "__main__":
    main(sys.argv[1:])
