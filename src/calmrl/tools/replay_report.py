"""`calmrl replay`'s outputs: the report (JSON-able), replay.md / replay.csv, replay.png and the terminal table."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from calmrl.tools.inspect_credit import json_safe

JSON_FILE, TABLE_FILE, CSV_FILE, PLOT_FILE = "replay.json", "replay.md", "replay.csv", "replay.png"


def build_report(
    header: Mapping[str, Any],
    names: Sequence[str],
    stats: Mapping[str, Sequence[Mapping[str, Any]]],
    summary: Mapping[str, Mapping[str, Any]],
    batch_info: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The JSON-able report: `header` (run, weights, reference, ...), then per estimator of `names` the spread
    over batches of its advantage statistics (`stats[name]`, one `advantage_stats` dict per batch) and of its
    gradient numbers (`summary[name]`, `gradient_summary`), its advantage by step and outcome, its per-batch
    numbers, and `batch_info` (one dict per batch)."""
    report: dict[str, Any] = {
        **header,
        "batches": len(batch_info),
        "iterations": [b["iteration"] for b in batch_info],
        "estimators": {},
        "per_batch": {},
        "batch_info": list(batch_info),
    }
    for n in names:
        scalar_keys = [k for k, v in stats[n][0].items() if isinstance(v, float | int)]
        g = summary[n]
        report["estimators"][n] = {
            "advantages": {k: spread([s[k] for s in stats[n]]) for k in scalar_keys},
            "gradient": {
                **{k: spread(g[k]) for k in ("grad_norm", "noise_std", "snr", "cos_reference")},
                **{
                    k: g[k]
                    for k in (
                        "pooled_snr",
                        "pooled_noise_std",
                        "across_batch_noise_std",
                        "mean_grad_norm",
                        "mean_grad_cos_reference",
                    )
                },
                "mean_grad_cos": {o: c for o, c in g["mean_grad_cos"].items() if o in names},
            },
            "mass_by_step": _aggregate_mass([s["mass_by_step"] for s in stats[n]]),
        }
        report["per_batch"][n] = {
            **{k: g[k] for k in ("snr", "cos_reference", "grad_norm")},
            **{k: [s[k] for s in stats[n]] for k in scalar_keys},
        }
    return json_safe(report)


def write_outputs(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """replay.md, replay.csv, replay.png and replay.json into `out_dir`; returns their paths by kind."""
    import json

    paths = {
        kind: out_dir / name
        for kind, name in (("table", TABLE_FILE), ("csv", CSV_FILE), ("plot", PLOT_FILE), ("json", JSON_FILE))
    }
    write_tables(report, paths["table"], paths["csv"])
    render_plot(report, paths["plot"])
    paths["json"].write_text(json.dumps(report, indent=2), encoding="utf-8")
    return paths


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """{median, min, max, n} of the finite values (None where there are none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite), "n": len(finite)}


#: the table's columns: (header, how to read it off an estimator's report)
COLUMNS: list[tuple[str, Any]] = [
    ("estimator", lambda name, r: name),
    ("abs(A) per token", lambda name, r: r["advantages"]["token_abs_mean"]["median"]),
    ("zero-A tokens", lambda name, r: r["advantages"]["zero_adv_token_frac"]["median"]),
    ("step-A std in traj", lambda name, r: r["advantages"]["within_traj_step_std"]["median"]),
    ("corr(A, return)", lambda name, r: r["advantages"]["adv_return_corr"]["median"]),
    ("sign mismatch", lambda name, r: r["advantages"]["adv_sign_mismatch_frac"]["median"]),
    ("SNR per batch", lambda name, r: r["gradient"]["snr"]),
    ("SNR pooled", lambda name, r: r["gradient"]["pooled_snr"]),
    ("cos(g, ref) per batch", lambda name, r: r["gradient"]["cos_reference"]),
    ("cos(mean g, ref)", lambda name, r: r["gradient"]["mean_grad_cos_reference"]),
]


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if value.get("median") is None:
            return "n/a"
        return f"{value['median']:.3g} [{value['min']:.3g}, {value['max']:.3g}]"
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.3g}"


def write_tables(report: Mapping[str, Any], md_path: Path, csv_path: Path) -> None:
    """replay.md (a Markdown table: median [min, max] over batches) and replay.csv (medians and ranges as
    separate columns, for a spreadsheet)."""
    rows = [[_cell(read(name, r)) for _, read in COLUMNS] for name, r in report["estimators"].items()]
    head = [h for h, _ in COLUMNS]
    lines = [
        f"# calmrl replay: {report['batches']} batches of {report['run']} ({report['source']})",
        "",
        f"Gradients at: {report['weights']}. Reference: {report['reference_description']}. "
        f"Importance weights (cap {report['max_is_weight']}): effective sample size "
        f"{_cell(spread([b['is_ess_frac'] for b in report['batch_info']]))} of the tokens. "
        "Per-batch columns: median [min, max] over the batches.",
        *(
            [
                f"The reference's own SNR on its fresh trajectories: {_cell(spread(reference_snr))} (near 0: it is "
                "still noise, raise reference_rollouts)."
            ]
            if (reference_snr := [b["reference_snr"] for b in report["batch_info"] if "reference_snr" in b])
            else []
        ),
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    md_path.write_text("\n".join(lines), encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        flat_head = []
        for h, _ in COLUMNS:
            flat_head += [h] if h in ("estimator", "SNR pooled", "cos(mean g, ref)") else [h, f"{h} min", f"{h} max"]
        writer.writerow(flat_head)
        for name, r in report["estimators"].items():
            row = []
            for _, read in COLUMNS:
                value = read(name, r)
                row += [value] if not isinstance(value, Mapping) else [value["median"], value["min"], value["max"]]
            writer.writerow(row)


def render_plot(report: Mapping[str, Any], path: Path) -> Path:
    """replay.png: per-batch SNR and cosine with the reference (one box of points per estimator), and the mean
    step advantage per step index for trajectories above (solid) and below (dashed) their group's mean return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["estimators"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key, title in (
        (axes[0], "snr", "gradient SNR per batch"),
        (axes[1], "cos_reference", f"cosine with the reference ({report['reference']})"),
    ):
        data = [[v for v in report["per_batch"][n][key] if v is not None and math.isfinite(v)] for n in names]
        ax.boxplot([d if d else [math.nan] for d in data], tick_labels=names, showfliers=False)
        for i, d in enumerate(data, start=1):
            ax.plot([i] * len(d), d, "o", alpha=0.45, markersize=4)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax = axes[2]
    for i, name in enumerate(names):
        colour = f"C{i}"
        by_step = report["estimators"][name]["mass_by_step"]
        steps = sorted(by_step, key=int)
        # estimators differ in scale (GiGPO adds a step term): in units of each one's mean |A| they compare
        scale = report["estimators"][name]["advantages"]["token_abs_mean"]["median"] or 1.0
        for side, style in (("better", "-"), ("worse", "--")):
            ys = [None if by_step[s][side] is None else by_step[s][side] / scale for s in steps]
            ax.plot(
                [int(s) for s in steps],
                [math.nan if y is None else y for y in ys],
                style,
                color=colour,
                marker="o",
                markersize=3,
                label=f"{name}, {side} than its group",
            )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("step index")
    ax.set_title("step advantage / mean |A|, by outcome")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"calmrl replay: {report['batches']} batches, gradients at {report['weights_short']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _aggregate_mass(per_batch_mass: Sequence[Mapping[int, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per step index, the row-weighted mean over batches of the better / worse step advantages."""
    out: dict[str, dict[str, Any]] = {}
    for steps in per_batch_mass:
        for t, entry in steps.items():
            acc = out.setdefault(str(t), {"better": [], "worse": [], "rows": 0})
            acc["rows"] += entry["rows"]
            for side in ("better", "worse"):
                if entry[side] is not None:
                    acc[side].append(entry[side])
    return {
        t: {
            "better": statistics.fmean(v["better"]) if v["better"] else None,
            "worse": statistics.fmean(v["worse"]) if v["worse"] else None,
            "rows": v["rows"],
        }
        for t, v in out.items()
    }


#: the terminal's narrower table: (short header, the COLUMNS entry it shows), medians only
TERMINAL_COLUMNS = [
    ("estimator", "estimator"),
    ("|A|", "abs(A) per token"),
    ("zero-A", "zero-A tokens"),
    ("corr(A,R)", "corr(A, return)"),
    ("SNR", "SNR per batch"),
    ("SNR pooled", "SNR pooled"),
    ("cos ref", "cos(g, ref) per batch"),
    ("cos mean g", "cos(mean g, ref)"),
]


def print_table(report: Mapping[str, Any], console) -> None:
    from rich.table import Table

    readers = dict(COLUMNS)
    table = Table(title=f"replay of {report['batches']} batches: medians over batches (replay.md has the ranges)")
    for header, _ in TERMINAL_COLUMNS:
        first = header == "estimator"
        table.add_column(header, justify="left" if first else "right", no_wrap=first, min_width=12 if first else None)
    for name, r in report["estimators"].items():
        cells = []
        for _, column in TERMINAL_COLUMNS:
            value = readers[column](name, r)
            cells.append(_cell(value["median"] if isinstance(value, Mapping) else value))
        table.add_row(*cells)
    console.print(table)
