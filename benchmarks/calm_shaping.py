"""CALM subgoal shaping vs no shaping: gridworld key variant, algo=grpo, the oracle judge, equal env-step budget.

Trains `shaper=none` (the named baseline) and `shaper=calm` (oracle judge: exact "pick up the key" /
"reach the goal" labels, lambda = --bonus) for several seeds each. Every run stops once it has used
`--env-steps` environment steps (equal budget), with greedy success on the held-out seeds measured at
`--evals` evenly spaced points of that budget. Writes

    <out>/calm_shaping.png   greedy success vs environment steps (mean and min-max over seeds)
    <out>/calm_shaping.md    the same numbers as a table, and calm's final success minus the baseline's

    python benchmarks/calm_shaping.py                              # 3 seeds, ~10 min on 2 cores
    python benchmarks/calm_shaping.py --seeds 0 --env-steps 8000   # a quick look
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The key/door task: the goal stays closed until the key is picked up; a small batch keeps it fast.
KEY_GRIDWORLD = [
    "env.key=true",
    "env.size=4",
    "env.walls=1",
    "env.max_steps=10",
    "env.eval_episodes=32",
    "rollout.num_groups=8",
    "rollout.group_size=8",
]


def run(shaper: str, seed: int, budget: int, evals: int, bonus: float, overrides: list[str]) -> list[tuple[int, float]]:
    """Train one run until `budget` env steps; returns (cumulative env steps, greedy success) at each evaluation."""
    from hydra import compose, initialize_config_dir

    from calmrl.cli import CONFIG_DIR
    from calmrl.config import validate
    from calmrl.loops import build_trainer

    extra = [f"shaper.bonus={bonus}"] if shaper == "calm" else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "algo=grpo",
                f"shaper={shaper}",
                f"seed={seed}",
                "run_name=bench",
                "logger=jsonl",
                *KEY_GRIDWORLD,
                *extra,
                *overrides,
            ],
        )
    validate(cfg)
    marks = [budget * (k + 1) // evals for k in range(evals)]
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp))
        points = [(0, trainer.evaluate().success_rate)]
        env_steps, it = 0, 0
        while marks:
            it += 1
            env_steps += int(trainer.train_iteration(it)["perf/steps"])
            if env_steps >= marks[0]:
                while marks and env_steps >= marks[0]:
                    marks.pop(0)
                points.append((env_steps, trainer.evaluate().success_rate))
        print(f"  {shaper:>5} seed {seed}: greedy success {points[-1][1]:.3f} after {env_steps} env steps", flush=True)
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
    parser.add_argument("--env-steps", type=int, default=30000, help="env-step budget of every run")
    parser.add_argument("--evals", type=int, default=6, help="evaluations, evenly spaced over the budget")
    parser.add_argument("--bonus", type=float, default=0.2, help="CALM's lambda per subgoal")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel processes (one torch thread each)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for both runs")
    args = parser.parse_args()

    tasks = [(shaper, seed) for shaper in ("none", "calm") for seed in args.seeds]
    job = (args.env_steps, args.evals, args.bonus, args.overrides)
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            curves = [f.result() for f in [pool.submit(run, s, seed, *job) for s, seed in tasks]]
    else:
        _worker_init(threads=None)
        curves = [run(s, seed, *job) for s, seed in tasks]
    results: dict[str, list[list[tuple[int, float]]]] = {"none": [], "calm": []}
    for (shaper, _), curve in zip(tasks, curves, strict=True):
        results[shaper].append(curve)

    args.out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# CALM shaping (oracle judge, lambda={args.bonus}) vs no shaping (baseline), algo=grpo",
        "",
        f"gridworld {' '.join(KEY_GRIDWORLD + args.overrides)}; seeds {args.seeds}; equal budget of "
        f"{args.env_steps} env steps per run; greedy success on held-out seeds, mean [min, max]",
        "",
        "| eval | " + " | ".join(f"shaper={s} env steps (mean) | shaper={s} success" for s in results) + " |",
        "|---|" + "---|---|" * len(results),
    ]
    final = {}
    for k in range(len(results["none"][0])):
        cells = []
        for shaper, runs in results.items():
            succ = [r[k][1] for r in runs]
            cells += [
                f"{np.mean([r[k][0] for r in runs]):.0f}",
                f"{np.mean(succ):.3f} [{min(succ):.3f}, {max(succ):.3f}]",
            ]
            final[shaper] = float(np.mean(succ))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"final: none {final['none']:.3f}, calm {final['calm']:.3f}, calm - none = {final['calm'] - final['none']:+.3f}",
    ]
    (args.out / "calm_shaping.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for shaper, runs in results.items():
        steps = np.mean([[p[0] for p in r] for r in runs], axis=0)
        succ = np.array([[p[1] for p in r] for r in runs])
        ax.plot(steps, succ.mean(0), marker="o", label=f"shaper={shaper} (mean of {len(runs)} seeds)")
        ax.fill_between(steps, succ.min(0), succ.max(0), alpha=0.2)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("greedy success (held-out seeds)")
    ax.set_title("gridworld key variant, GRPO: CALM (oracle) vs none")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "calm_shaping.png", dpi=120)
    print(f"wrote {args.out / 'calm_shaping.png'} and {args.out / 'calm_shaping.md'}")


if __name__ == "__main__":
    main()
