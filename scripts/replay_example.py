"""The worked example of docs/replay.md: GRPO, RLOO and GiGPO replayed on the same recorded gridworld batches.

For each seed: the embedded default run (gridworld, tiny policy, GRPO) for 20 iterations, recording every
iteration's batch (`trainer.record_rollouts=1`); then `calmrl replay` of its 20 batches at its final checkpoint,
once with the default reference (RLOO's estimate averaged over the other 19 batches) and once with a high-sample
reference (RLOO on `--reference-rollouts` fresh trajectories per task of each batch, at the same weights).
Seed 0's replay.png becomes docs/figures/replay.png; the per-seed numbers (pooled SNR, per-batch SNR and cosine
medians) are summarised over seeds (median, range) in docs/figures/replay_seeds.md.

    python scripts/replay_example.py                       # 8 seeds, about 12 minutes on two CPU cores
    python scripts/replay_example.py --seeds 0 --reference-rollouts 0   # one seed, no fresh reference
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESTIMATORS = ["grpo", "rloo", "gigpo"]
NUMBERS = [
    ("pooled SNR", lambda g: g["pooled_snr"]),
    ("per-batch SNR (median)", lambda g: g["snr"]["median"]),
    ("cos(g, ref) per batch (median)", lambda g: g["cos_reference"]["median"]),
    ("cos(mean g, ref)", lambda g: g["mean_grad_cos_reference"]),
]


def calmrl(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "calmrl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def summary(values: list[float | None]) -> str:
    finite = [v for v in values if v is not None]
    if not finite:
        return "n/a"
    missing = f", {len(values) - len(finite)} n/a" if len(finite) < len(values) else ""
    return f"{statistics.median(finite):.3g} [{min(finite):.3g}, {max(finite):.3g}]{missing}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--reference-rollouts", type=int, default=32)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "replay-example")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    args = parser.parse_args()
    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    reports: dict[str, list[dict]] = {"leave-one-out": [], "fresh": []}
    for seed in args.seeds:
        run = f"gridworld-grpo-seed{seed}"  # relative to `work`, so the reports name no machine's paths
        calmrl(
            "train",
            f"seed={seed}",
            f"trainer.total_iters={args.iters}",
            "trainer.record_rollouts=1",
            "trainer.eval_every=0",
            f"hydra.run.dir={run}",
            cwd=work,
        )
        estimators = f"estimators=[{','.join(ESTIMATORS)}]"
        calmrl("replay", f"run={run}", estimators, f"hydra.run.dir={run}/replay", cwd=work)
        reports["leave-one-out"].append(json.loads((work / run / "replay" / "replay.json").read_text()))
        if args.reference_rollouts:
            calmrl(
                "replay",
                f"run={run}",
                estimators,
                f"reference_rollouts={args.reference_rollouts}",
                f"hydra.run.dir={run}/replay-fresh",
                cwd=work,
            )
            reports["fresh"].append(json.loads((work / run / "replay-fresh" / "replay.json").read_text()))
        print(f"seed {seed}: done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    first = work / f"gridworld-grpo-seed{args.seeds[0]}"
    shutil.copy(first / "replay" / "replay.png", args.out / "replay.png")
    shutil.copy(first / "replay" / "replay.md", args.out / "replay_seed0.md")
    lines = [
        f"# calmrl replay over {len(args.seeds)} seeds (scripts/replay_example.py)",
        "",
        f"Each seed: the default gridworld GRPO run, {args.iters} iterations, every batch recorded, replayed at its "
        "final checkpoint. Each cell: median [min, max] over the seeds of that seed's number.",
        "",
    ]
    for kind, title in (
        ("leave-one-out", "reference: RLOO averaged over the other recorded batches"),
        ("fresh", f"reference: RLOO on {args.reference_rollouts} fresh trajectories per task of each batch"),
    ):
        if not reports[kind]:
            continue
        lines += [
            f"## {title}",
            "",
            "| estimator | " + " | ".join(n for n, _ in NUMBERS) + " |",
            "|---|" + "---|" * len(NUMBERS),
        ]
        for name in ESTIMATORS:
            cells = [summary([read(r["estimators"][name]["gradient"]) for r in reports[kind]]) for _, read in NUMBERS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        wins = sum(
            r["estimators"]["gigpo"]["gradient"]["snr"]["median"] > r["estimators"]["grpo"]["gradient"]["snr"]["median"]
            for r in reports[kind]
        )
        lines += ["", f"Seeds where GiGPO's per-batch SNR median is above GRPO's: {wins} of {len(reports[kind])}.", ""]
    ess = [statistics.median(b["is_ess_frac"] for b in r["batch_info"]) for r in reports["leave-one-out"]]
    seconds = [r["seconds"] for r in reports["leave-one-out"]]
    lines += [
        f"Importance weights' effective sample size (per-seed median over batches): {summary(ess)}. "
        f"Replay time per seed (20 batches, leave-one-out reference): {summary(seconds)} s.",
        "",
    ]
    (args.out / "replay_seeds.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
