"""`calmrl compare`: metrics of several runs against steps, mean and spread over seeds, grouped by a config key.

Reads each run's `metrics.jsonl` (one JSON object per iteration) and `.hydra/config.yaml`, groups the runs by
a dotted config key (`algo.name` by default), aligns the runs of a group by iteration and writes, per metric,
a PNG (group mean with a min-max band) and `summary.md` / `summary.csv` (final, best and area under the curve).

The computation is pure functions (`load_runs`, `group_runs`, `run_curve`, `aggregate`, `compare`,
`summary_rows`); writing files and plotting is a thin layer on top.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calmrl.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
RUN_CONFIG = Path(".hydra") / "config.yaml"
X_AXES = {"env_steps": "environment steps", "iter": "iteration"}
STEPS_KEY = "perf/steps"  # env steps (step rows) of one iteration

CSV_FIELDS = [
    "group",
    "metric",
    "runs",
    "points",
    "final_x",
    "final_mean",
    "final_std",
    "final_min",
    "final_max",
    "best_mean",
    "best_x",
    "auc",
]


@dataclass
class Run:
    path: Path
    config: DictConfig  # the run's composed config (empty when the run has no .hydra/config.yaml)
    records: list[dict[str, Any]]  # one per iteration, sorted by "iter"
    has_config: bool = True

    def metric_names(self) -> set[str]:
        return {k for r in self.records for k in r if k != "iter"}


@dataclass
class Curve:
    """One run's points of one metric (only the iterations that logged it)."""

    run: Path
    iters: np.ndarray
    x: np.ndarray
    y: np.ndarray


@dataclass
class Comparison:
    """metric -> group -> aggregate (see `aggregate`), the runs of each group, and notes for the user."""

    results: dict[str, dict[str, dict[str, np.ndarray]]]
    groups: dict[str, list[Run]]
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- loading
def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, sorted by iteration; torn or foreign lines are skipped, and a replayed
    iteration keeps its last record."""
    by_iter: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            it = int(record["iter"])
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a kill mid-write
        if isinstance(record, dict):
            by_iter[it] = {**record, "iter": it}
    return [by_iter[it] for it in sorted(by_iter)]


def find_run_dirs(path: Path) -> list[Path]:
    """`path` itself when it holds a metrics.jsonl, else every directory below it that does (a sweep)."""
    if (path / METRICS_FILE).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(METRICS_FILE) if p.is_file())


def load_runs(paths: Iterable[str | Path]) -> list[Run]:
    """Load run directories, or sweep directories searched recursively for runs."""
    paths = list(paths)
    if not paths:
        raise ConfigError("calmrl compare needs runs=[<run or sweep directory>, ...]")
    runs: dict[Path, Run] = {}
    for given in paths:
        root = Path(given).expanduser()
        if not root.is_dir():
            raise ConfigError(f"runs: {given} is not a directory")
        found = find_run_dirs(root)
        if not found:
            raise ConfigError(f"runs: no run under {given} (no {METRICS_FILE} in it or below it)")
        for run_dir in found:
            key = run_dir.resolve()
            if key in runs:
                continue
            cfg_path = run_dir / RUN_CONFIG
            has_config = cfg_path.is_file()
            config = OmegaConf.load(cfg_path) if has_config else OmegaConf.create({})
            if not isinstance(config, DictConfig):
                config, has_config = OmegaConf.create({}), False
            runs[key] = Run(run_dir, config, read_metrics(run_dir / METRICS_FILE), has_config)
    return list(runs.values())


# ---------------------------------------------------------------- grouping
def config_keys(config: DictConfig) -> list[str]:
    """Dotted keys of a config's leaves, `*.name` and top-level ones first."""
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                keys.append(key)

    walk(OmegaConf.to_container(config, resolve=False), "")
    return [k for k in keys if k.endswith(".name") or "." not in k] + [
        k for k in keys if not (k.endswith(".name") or "." not in k)
    ]


def group_value(run: Run, key: str) -> Any:
    """The value of a dotted config key in `run`; a config section stands for its `name`."""
    if not run.has_config:
        raise ConfigError(f"group_by={key}: run {run.path} has no {RUN_CONFIG}, so it cannot be grouped")
    missing = object()
    try:
        value = OmegaConf.select(run.config, key, default=missing)
    except Exception:  # an interpolation that only resolves inside Hydra
        value = OmegaConf.select(run.config, key, default=missing, throw_on_resolution_failure=False)
    if value is missing:
        few = ", ".join(config_keys(run.config)[:12])
        raise ConfigError(f"group_by={key} is not a key of {run.path / RUN_CONFIG}; keys there include: {few}")
    if isinstance(value, DictConfig):
        if "name" not in value:
            sub = ", ".join(f"{key}.{k}" for k in list(value.keys())[:8])
            raise ConfigError(f"group_by={key} is a config section, not a value; pick a key in it: {sub}")
        value = value.name
    if OmegaConf.is_config(value):  # a list: group by its text
        return str(OmegaConf.to_container(value))
    return value


def group_runs(runs: Sequence[Run], key: str) -> dict[str, list[Run]]:
    """Runs by the value of `key` (groups in sorted order, numerically when every value is a number)."""
    values = [group_value(run, key) for run in runs]
    groups: dict[Any, list[Run]] = {}
    for value, run in zip(values, runs, strict=True):
        groups.setdefault(value, []).append(run)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in groups)
    order = sorted(groups, key=(lambda v: v) if numeric else str)
    return {str(v): sorted(groups[v], key=lambda r: str(r.path)) for v in order}


# ---------------------------------------------------------------- curves and statistics
def moving_average(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: point i is the mean of points max(0, i - window + 1)..i."""
    if window <= 1 or len(y) == 0:
        return np.asarray(y, dtype=float)
    csum = np.concatenate([[0.0], np.cumsum(y, dtype=float)])
    i = np.arange(len(y))
    lo = np.maximum(0, i - window + 1)
    return (csum[i + 1] - csum[lo]) / (i + 1 - lo)


def env_steps(run: Run) -> dict[int, float]:
    """Cumulative environment steps (sum of perf/steps) at the end of each logged iteration."""
    missing = [r["iter"] for r in run.records if not _is_number(r.get(STEPS_KEY))]
    if missing:
        raise ConfigError(
            f"x=env_steps needs {STEPS_KEY} on every iteration, but {run.path / METRICS_FILE} lacks it at "
            f"iteration {missing[0]}; use x=iter"
        )
    total, out = 0.0, {}
    for r in run.records:
        total += float(r[STEPS_KEY])
        out[r["iter"]] = total
    return out


def run_curve(run: Run, metric: str, x: str = "env_steps", smooth: int = 1) -> Curve | None:
    """The iterations where `run` logged `metric`, their x (iteration or cumulative env steps) and the values
    (smoothed with a trailing window of `smooth` points); None when the run never logged it."""
    if x not in X_AXES:
        raise ConfigError(f"x={x} is not an x axis; choose one of: {', '.join(X_AXES)}")
    points = [(r["iter"], float(r[metric])) for r in run.records if _is_number(r.get(metric))]
    if not points:
        return None
    iters = np.array([p[0] for p in points], dtype=int)
    if x == "iter":
        xs = iters.astype(float)
    else:
        steps = env_steps(run)
        xs = np.array([steps[it] for it in iters], dtype=float)
    return Curve(run.path, iters, xs, moving_average(np.array([p[1] for p in points]), smooth))


def aggregate(curves: Sequence[Curve]) -> dict[str, np.ndarray]:
    """Align curves on the iterations they all have; at each: the mean x over runs and the mean, std (over runs,
    ddof=0), min and max of the values. Keys: iter, x, mean, std, min, max, runs (the count, per point)."""
    if not curves:
        raise ValueError("aggregate needs at least one curve")
    common = curves[0].iters
    for c in curves[1:]:
        common = np.intersect1d(common, c.iters)
    if len(common) == 0:
        raise ConfigError(f"runs {', '.join(str(c.run) for c in curves)} have no logged iteration in common")
    xs = np.stack([c.x[np.isin(c.iters, common)] for c in curves])
    ys = np.stack([c.y[np.isin(c.iters, common)] for c in curves])
    return {
        "iter": common,
        "x": xs.mean(0),
        "mean": ys.mean(0),
        "std": ys.std(0),
        "min": ys.min(0),
        "max": ys.max(0),
        "runs": np.full(len(common), len(curves)),
    }


def compare(
    runs: Sequence[Run], metrics: Sequence[str], group_by: str = "algo.name", x: str = "env_steps", smooth: int = 1
) -> Comparison:
    """Group `runs` by `group_by` and aggregate every metric within each group."""
    if not runs:
        raise ConfigError("no runs to compare")
    if not metrics:
        raise ConfigError("metrics is empty; give e.g. metrics=[eval/success_rate]")
    if x not in X_AXES:
        raise ConfigError(f"x={x} is not an x axis; choose one of: {', '.join(X_AXES)}")
    if smooth < 1:
        raise ConfigError(f"smooth must be >= 1 (a window of points; 1 = no smoothing), got {smooth}")
    present = set().union(*(run.metric_names() for run in runs))
    absent = [m for m in metrics if m not in present]
    if absent:
        raise ConfigError(f"metric {', '.join(absent)} is in no run; metrics there: {', '.join(sorted(present))}")
    groups = group_runs(runs, group_by)
    out = Comparison({}, groups)
    for metric in metrics:
        out.results[metric] = {}
        for name, members in groups.items():
            curves = [c for run in members if (c := run_curve(run, metric, x, smooth)) is not None]
            if len(curves) < len(members):
                lacking = len(members) - len(curves)
                out.notes.append(
                    f"{metric}: {lacking} of {len(members)} run(s) of {name} never logged it"
                    + ("; group left out" if not curves else "")
                )
            if not curves:
                continue
            agg = aggregate(curves)
            dropped = max(len(c.iters) for c in curves) - len(agg["iter"])
            if dropped:
                out.notes.append(
                    f"{metric}: the runs of {name} logged different iterations; using the {len(agg['iter'])} "
                    f"they have in common"
                )
            out.results[metric][name] = agg
    return out


def normalised_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Area under y(x) (trapezoids) divided by the x range: the curve's average height, one learning-speed
    number. A single point gives its value."""
    if len(x) == 1 or x[-1] == x[0]:
        return float(np.mean(y))
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def summary_row(group: str, metric: str, agg: dict[str, np.ndarray]) -> dict[str, Any]:
    best = int(np.argmax(agg["mean"]))
    return {
        "group": group,
        "metric": metric,
        "runs": int(agg["runs"][-1]),
        "points": len(agg["x"]),
        "final_x": float(agg["x"][-1]),
        "final_mean": float(agg["mean"][-1]),
        "final_std": float(agg["std"][-1]),
        "final_min": float(agg["min"][-1]),
        "final_max": float(agg["max"][-1]),
        "best_mean": float(agg["mean"][best]),
        "best_x": float(agg["x"][best]),
        "auc": normalised_auc(agg["x"], agg["mean"]),
    }


def summary_rows(results: dict[str, dict[str, dict[str, np.ndarray]]]) -> list[dict[str, Any]]:
    """One row per (group, metric), metric by metric in the order given."""
    return [summary_row(g, m, agg) for m, by_group in results.items() for g, agg in by_group.items()]


# ---------------------------------------------------------------- output
def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    return f"{v:.0f}" if abs(v) >= 1000 and float(v).is_integer() else f"{v:.4g}"


def markdown_table(rows: Sequence[dict[str, Any]], x: str) -> str:
    head = ["group", "metric", "runs", "final (mean ± std)", "final min", "final max", "best mean", f"best at {x}"]
    head.append(f"AUC / {x} range")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        cells = [
            r["group"],
            f"`{r['metric']}`",
            str(r["runs"]),
            f"{_fmt(r['final_mean'])} ± {_fmt(r['final_std'])}",
            _fmt(r["final_min"]),
            _fmt(r["final_max"]),
            _fmt(r["best_mean"]),
            _fmt(r["best_x"]),
            _fmt(r["auc"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_metric(path: Path, metric: str, by_group: dict[str, dict[str, np.ndarray]], x: str) -> None:
    """One line per group (the mean over its runs) with a shaded min-max band."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for name, agg in by_group.items():
            n = int(agg["runs"][-1])
            marker = "o" if len(agg["x"]) <= 30 else None
            (line,) = ax.plot(
                agg["x"], agg["mean"], marker=marker, markersize=4, label=f"{name} ({n} run{'s' * (n != 1)})"
            )
            ax.fill_between(agg["x"], agg["min"], agg["max"], color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(metric)
        ax.set_title(f"{metric}: mean over runs, band = min-max")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def run_compare_command(cfg, out_dir: Path) -> dict:
    """`calmrl compare`: load the runs, aggregate, write a PNG per metric plus summary.md / summary.csv into
    `cfg.out` (or `out_dir`, the Hydra run directory), and print the table and the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    runs = load_runs(list(cfg.runs))
    result = compare(runs, list(cfg.metrics), cfg.group_by, cfg.x, int(cfg.smooth))
    rows = summary_rows(result.results)

    out = Path(cfg.out).expanduser() if cfg.out else out_dir
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for metric, by_group in result.results.items():
        if by_group:
            plots.append(out / f"{metric.replace('/', '_')}.png")
            plot_metric(plots[-1], metric, by_group, cfg.x)

    table = markdown_table(rows, cfg.x)
    smoothing = f", moving average over {cfg.smooth} points" if cfg.smooth > 1 else ""
    runs_md = "\n".join(
        f"- **{name}** ({len(members)}): " + ", ".join(f"`{r.path}`" for r in members)
        for name, members in result.groups.items()
    )
    notes_md = "".join(f"- {n}\n" for n in result.notes)
    md = (
        f"# Comparison of {len(runs)} runs grouped by `{cfg.group_by}`\n\n"
        f"x = {X_AXES[cfg.x]}{smoothing}; statistics over the runs of each group at each x "
        "(std with ddof=0); AUC = area under the mean curve / x range.\n\n"
        f"{table}\n\n## Runs\n\n{runs_md}\n" + (f"\n## Notes\n\n{notes_md}" if notes_md else "")
    )
    md_path, csv_path = out / "summary.md", out / "summary.csv"
    md_path.write_text(md)
    csv_path.write_text(csv_text(rows))

    groups = ", ".join(f"{name} ({len(members)})" for name, members in result.groups.items())
    print(f"{len(runs)} runs grouped by {cfg.group_by}: {groups}\n\n{table}\n")
    for note in result.notes:
        print(f"note: {note}")
    print("\n".join(f"plot: {p}" for p in plots))
    print(f"summary: {md_path}\nsummary: {csv_path}")
    return {"rows": rows, "plots": plots, "summary_md": md_path, "summary_csv": csv_path, "notes": result.notes}
