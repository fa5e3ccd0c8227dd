"""Metric sinks: metrics.jsonl (always), the console (rich), and Weights & Biases (optional).

Metric names are namespaced by stage: rollout/, reward/, credit/, loss/, eval/, perf/.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

#: metric -> label in the one-line progress status
HEADLINE = {
    "rollout/success_rate": "success",
    "rollout/episode_return": "return",
    "rollout/invalid_rate": "invalid",
    "eval/success_rate": "eval_success",
    "loss/policy": "pg_loss",
    "perf/iter_s": "sec",
}


class JsonlWriter:
    """Appends one JSON object per iteration; on resume, drops records past the checkpoint's step so a
    replayed iteration is not counted twice."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if (it := _iter_of(line)) is not None and it <= resume_step
            ]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        elif resume_step is None and path.exists():
            path.unlink()
        self._fh = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _iter_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["iter"])
    except (ValueError, KeyError, TypeError):
        return None  # a line torn by a kill mid-write


class MetricsLogger:
    def __init__(
        self,
        cfg,
        run_dir: Path,
        total_iters: int,
        start_iter: int,
        resume_step: int | None,
        full_config: dict,
    ):
        self.cfg = cfg
        self.console = Console(soft_wrap=True)  # never break a path across lines
        self.jsonl = JsonlWriter(run_dir / "metrics.jsonl", resume_step)
        self.table_every = max(int(cfg.table_every), 1)
        self.interactive = self.console.is_terminal and cfg.name != "jsonl"
        self.wandb = None
        if cfg.name == "wandb":
            self.wandb = _start_wandb(cfg, run_dir, full_config, resumed=resume_step is not None)
        self.progress = None
        if self.interactive:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.progress.add_task("train", total=total_iters, completed=start_iter, status="")
            self.progress.start()

    def log(self, it: int, metrics: dict[str, float]) -> None:
        self.jsonl.write({"iter": it, **metrics})
        if self.wandb is not None:
            self.wandb.log(metrics, step=it)
        status = "  ".join(f"{label}={metrics[k]:.3g}" for k, label in HEADLINE.items() if k in metrics)
        if self.progress is not None:
            self.progress.update(self.task, completed=it, status=status)
        else:
            print(f"iter {it:>5}  {status}", flush=True)
        if self.cfg.name != "jsonl" and it % self.table_every == 0:
            self.print_table(it, metrics)

    def print_table(self, it: int, metrics: dict[str, float]) -> None:
        table = Table(title=f"iteration {it}", header_style="bold")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in sorted(metrics.items()):
            table.add_row(key, f"{value:.4g}")
        self.console.print(table)

    def message(self, text: str) -> None:
        self.console.print(text)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


def _start_wandb(cfg, run_dir: Path, full_config: dict, resumed: bool):
    try:
        import wandb
    except ImportError:
        print("calmrl: logger=wandb needs the wandb package: pip install 'calmrl[wandb]'", file=sys.stderr)
        raise SystemExit(2) from None
    mode = cfg.mode or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        mode=mode,
        dir=str(run_dir),
        config=full_config,
        id=run_dir.name.replace("/", "-"),
        resume="allow" if resumed else None,
    )
