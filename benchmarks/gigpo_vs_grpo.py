"""GiGPO vs GRPO on a gridworld long enough that step-level credit matters.

Trains `algo=grpo` and `algo=gigpo` for several seeds each with the same number of trajectories per
iteration and the same number of iterations (equal sample budget), evaluates greedy success on the
held-out seeds every `--eval-every` iterations, and writes

    <out>/gigpo_vs_grpo.png   greedy success vs environment steps (mean and min-max over seeds)
    <out>/gigpo_vs_grpo.md    the same numbers as a table, with the final mean of each algorithm

GRPO is the named baseline: the table's last line gives GiGPO's final success minus GRPO's.

    python benchmarks/gigpo_vs_grpo.py                       # 3 seeds, 7x7 grid with 6 walls, 20 steps
    python benchmarks/gigpo_vs_grpo.py --seeds 0 1 --iters 60 env.size=6
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A longer task than the default: bigger grid, more walls, longer episodes.
LONG_GRIDWORLD = ["env.size=7", "env.walls=6", "env.max_steps=20", "env.eval_episodes=64"]


def run(algo: str, seed: int, iters: int, eval_every: int, overrides: list[str]) -> list[tuple[int, float]]:
    """Train one run; returns (cumulative env steps, greedy success) at each evaluation."""
    from hydra import compose, initialize_config_dir

    from calmrl.cli import CONFIG_DIR
    from calmrl.config import validate
    from calmrl.trainer import Trainer

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"algo={algo}", f"seed={seed}", "run_name=bench", "logger=jsonl", *LONG_GRIDWORLD, *overrides],
        )
    validate(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))
        points = [(0, trainer.evaluate().success_rate)]
        env_steps = 0
        for it in range(1, iters + 1):
            env_steps += int(trainer.train_iteration(it)["perf/steps"])
            if it % eval_every == 0 or it == iters:
                points.append((env_steps, trainer.evaluate().success_rate))
        print(
            f"  {algo:>6} seed {seed}: final greedy success {points[-1][1]:.3f} after {env_steps} env steps", flush=True
        )
    return points


def _worker_init(threads: int | None = 1) -> None:
    import torch

    from calmrl.cli import _quiet_libraries

    if threads:
        torch.set_num_threads(threads)
    _quiet_libraries()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (one torch thread each)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both algorithms")
    args = parser.parse_args()

    tasks = [(algo, seed) for algo in ("grpo", "gigpo") for seed in args.seeds]
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = [pool.submit(run, a, s, args.iters, args.eval_every, args.overrides) for a, s in tasks]
            curves = [f.result() for f in futures]
    else:
        _worker_init(threads=None)
        curves = [run(a, s, args.iters, args.eval_every, args.overrides) for a, s in tasks]
    results: dict[str, list[list[tuple[int, float]]]] = {"grpo": [], "gigpo": []}
    for (algo, _), curve in zip(tasks, curves, strict=True):
        results[algo].append(curve)

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# GiGPO vs GRPO (baseline) on gridworld {' '.join(LONG_GRIDWORLD + args.overrides)}",
        "",
        f"seeds {args.seeds}, {args.iters} iterations each; greedy success on held-out seeds, mean [min, max]",
        "",
        "| eval | " + " | ".join(f"{a} env steps (mean) | {a} success" for a in results) + " |",
        "|---|" + "---|---|" * len(results),
    ]
    summary = {}
    for k in range(len(next(iter(results.values()))[0])):
        cells = []
        for algo, runs in results.items():
            steps = np.mean([r[k][0] for r in runs])
            succ = [r[k][1] for r in runs]
            cells += [f"{steps:.0f}", f"{np.mean(succ):.3f} [{min(succ):.3f}, {max(succ):.3f}]"]
            summary[algo] = np.mean(succ)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"final: grpo {summary['grpo']:.3f}, gigpo {summary['gigpo']:.3f}, "
        f"gigpo - grpo = {summary['gigpo'] - summary['grpo']:+.3f}",
    ]
    (args.out / "gigpo_vs_grpo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for algo, runs in results.items():
        steps = np.mean([[p[0] for p in r] for r in runs], axis=0)
        succ = np.array([[p[1] for p in r] for r in runs])
        ax.plot(steps, succ.mean(0), label=f"{algo} (mean of {len(runs)} seeds)")
        ax.fill_between(steps, succ.min(0), succ.max(0), alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("greedy success (held-out seeds)")
    ax.set_title("gridworld 7x7, 6 walls, 20 steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "gigpo_vs_grpo.png", dpi=120)
    print(f"wrote {args.out / 'gigpo_vs_grpo.png'} and {args.out / 'gigpo_vs_grpo.md'}")


if __name__ == "__main__":
    main()
