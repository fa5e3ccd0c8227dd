"""One training iteration under `cluster=local learner=torch` (the baseline) vs `cluster=ray learner=deepspeed`
on CPU, and where the extra time goes: start-up (Ray, placement group, actors), the weight sync after the update
(rank-0 gather, packing + object-store put, worker loads) and everything else (serialising trajectories and
batches to and from actors, DeepSpeed's reduce).

The default size is the embedded default (`calmrl train`: tiny policy, 16 groups x 8 rollouts, gridworld) with
2 DeepSpeed ranks and 1 rollout worker; the goal is weight-sync time under 5% of an iteration. Iterations after
the first are timed (the first includes lazy start-up work in both setups); one torch thread everywhere.

    python benchmarks/scaleout_overhead.py [--iters 3] [--stage 2] [--workers 1] [--sync object_store|disk]
        [key=value ...]   # extra Hydra overrides for both runs, e.g. policy.hidden_size=256
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from calmrl.cli import CONFIG_DIR
    from calmrl.config import validate

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = hydra_compose("train", overrides=["run_name=bench", "cluster.num_threads=1", *overrides])
    validate(cfg)
    return cfg


def timed_run(overrides: list[str], iters: int, run_dir: Path) -> tuple[float, list[dict], object]:
    from calmrl.loops import build_trainer

    t0 = time.perf_counter()
    trainer = build_trainer(compose(overrides), run_dir)
    setup = time.perf_counter() - t0
    its = []
    for it in range(1, iters + 2):
        t = time.perf_counter()
        m = trainer.train_iteration(it)
        m["iter_s"] = time.perf_counter() - t
        its.append(m)
    return setup, its[1:], trainer


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r.get(key, 0.0) for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=3, help="timed iterations (after one warm-up) per setup")
    ap.add_argument("--stage", type=int, default=2)
    ap.add_argument("--learners", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--sync", default="object_store", choices=["object_store", "disk"])
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scaleout-"))

    local_setup, local, _ = timed_run(a.overrides, a.iters, tmp / "local")
    ray_over = [
        "cluster=ray",
        "learner=deepspeed",
        f"learner.zero_stage={a.stage}",
        f"cluster.num_learners={a.learners}",
        f"cluster.num_rollout_workers={a.workers}",
        f"cluster.weight_sync={a.sync}",
        *a.overrides,
    ]
    ray_setup, ray_its, trainer = timed_run(ray_over, a.iters, tmp / "ray")
    ct = trainer.cluster.timings
    params = sum(p.numel() for p in trainer.model.parameters())
    trainer.cluster.shutdown()

    li, ri = med(local, "iter_s"), med(ray_its, "iter_s")
    print(f"policy: {params / 1e6:.2f}M parameters; {len(local)} timed iterations each (medians), CPU, 1 thread/actor")
    print(f"{'':34}{'local+torch':>12}{'ray+deepspeed':>15}")
    for label, key in (
        ("iteration", "iter_s"),
        ("  generate (slowest worker)", "perf/generate_s"),
        ("  env", "perf/env_s"),
        ("  rollout other (ser./transfer)", "perf/rollout_other_s"),
        ("  credit", "perf/credit_s"),
        ("  update (incl. weight sync)", "perf/update_s"),
    ):
        print(f"{label:34}{med(local, key):>11.3f}s{med(ray_its, key):>14.3f}s")
    print("ray+deepspeed weight sync, per iteration:")
    for label, key in (
        ("  rank-0 gather", "perf/sync_gather_s"),
        ("  gather + pack + put (export)", "perf/sync_export_s"),
        ("  workers load (wall)", "perf/sync_workers_s"),
        ("  learner -> workers total", "perf/weight_sync_s"),
        ("  driver copy (eval/ckpt)", "perf/sync_driver_s"),
    ):
        print(f"{label:34}{'':12}{med(ray_its, key):>14.4f}s")
    print(
        f"one-off start-up: local {local_setup:.2f}s; ray {ray_setup:.2f}s "
        f"(ray.init {ct['ray_init_s']:.2f}s, placement {ct['placement_s']:.2f}s, "
        f"learners {ct['learners_s']:.2f}s, workers {ct['workers_s']:.2f}s)"
    )
    sync = med(ray_its, "perf/weight_sync_s")
    print(f"iteration time ratio ray+deepspeed / local+torch: {ri / li:.2f}x")
    print(f"weight sync / ray+deepspeed iteration: {100 * sync / ri:.2f}% (goal < 5%)")


if __name__ == "__main__":
    main()
