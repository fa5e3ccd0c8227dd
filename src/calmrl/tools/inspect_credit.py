"""`calmrl inspect`: roll out one group and show the credit each estimator assigns, per step and per token.

    calmrl inspect                                              # the tiny default policy on gridworld
    calmrl inspect checkpoint=runs/gridworld-grpo-seed0 estimators=[grpo,gigpo,reinforce_pp]

One group is `group_size` trajectories of ONE task seed (`task_seed`, default the first held-out seed
`env.eval_seed_offset`), sampled at `rollout.temperature`. Every selected estimator (a registered algo)
runs on the same batch with its default algo config (`conf/algo/<name>.yaml`, plus `algo_overrides.<name>`),
and the outputs are written side by side:

    credit.html          self-contained page: one table per trajectory, one row per step, step advantages
                         as coloured cells and the response tokens coloured by their token advantage
    credit_heatmap.png   rows = steps (grouped by trajectory), columns = estimators, colour = step advantage
    credit.json          the raw numbers (per step and per token)

A step's advantage is the mean of its token advantages over its response tokens. Estimators that read
reference log-probs (reinforce_pp) use the inspected policy itself as the reference, so their KL term
is 0; estimators that need a critic's values (ppo) are skipped, since there is no trained critic here.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calmrl.data import Batch, Trajectory

HTML_FILE = "credit.html"
HEATMAP_FILE = "credit_heatmap.png"
JSON_FILE = "credit.json"

REFERENCE_NOTE = "reference policy = the inspected policy itself, so the KL term is 0 (outcome credit only)"
CRITIC_SKIP = "skipped: it needs a trained critic (batch.values), and `calmrl inspect` has none"

SIGN_TOL = 1e-6  # |A| below this (relative to the estimator's largest, at least 1) counts as 0 in the summary
_POSITIVE = (178, 24, 43)  # red end of the diverging scale
_NEGATIVE = (33, 102, 172)  # blue end


# ---------------------------------------------------------------- estimators and credit
def plan_estimators(names: Sequence[str]) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """Split `names` into (estimators to run, {skipped name: reason}, {name: note}).

    Unknown names raise the algo registry's error (which lists every known algo). Duplicates are dropped.
    """
    from calmrl.algos import ALGOS

    run: list[str] = []
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}
    for name in dict.fromkeys(str(n) for n in names):
        needs = ALGOS.get(name).requires
        if "values" in needs:
            skipped[name] = f"{name} {CRITIC_SKIP}"
        elif needs - {"ref_logprobs"}:
            skipped[name] = f"{name} skipped: it needs batch fields {sorted(needs)} that inspect cannot fill"
        elif ALGOS.get(name).state is not None:
            skipped[name] = f"{name} skipped: its credit comes from a critic trained across iterations"
        else:
            run.append(name)
            if "ref_logprobs" in needs:
                notes[name] = REFERENCE_NOTE
    return run, skipped, notes


def algo_config(name: str, overrides: Mapping | None = None):
    """The default algo config of `name`: its schema, then `conf/algo/<name>.yaml`, then `overrides`."""
    from omegaconf import OmegaConf

    from calmrl.config import SCHEMAS

    schema = SCHEMAS["algo"].get(name)
    cfg = OmegaConf.structured(schema) if schema is not None else OmegaConf.create({})
    path = _conf_dir() / "algo" / f"{name}.yaml"
    if path.is_file():
        values = OmegaConf.load(path)
        values.pop("defaults", None)
        cfg = OmegaConf.merge(cfg, values)
    cfg = OmegaConf.merge(cfg, {"name": name})
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    return cfg


def credit_table(
    batch: Batch, estimators: Sequence[str], algo_overrides: Mapping | None = None
) -> dict[str, torch.Tensor]:
    """{estimator: advantages [N, L]} for every estimator `plan_estimators` lets run (the others are left out).

    The batch is not modified: each estimator gets a copy with the invalid-action penalty placed by its own
    `penalty_rule`, and those that read reference log-probs get `ref_logprobs` = the sampling log-probs
    (reference = the inspected policy, KL = 0).
    """
    from calmrl.algos import ALGOS
    from calmrl.data import apply_penalty_rule, penalty_rule

    run, _, _ = plan_estimators(estimators)
    overrides = algo_overrides or {}
    out: dict[str, torch.Tensor] = {}
    for name in run:
        fn = ALGOS.get(name)
        cfg = algo_config(name, overrides.get(name))
        view = apply_penalty_rule(replace(batch), penalty_rule(cfg))
        if fn.needs_ref:
            view.ref_logprobs = batch.old_logprobs.clone()
        out[name] = fn(view, cfg).detach().float().cpu()
    return out


def step_advantages(advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[N]: each row's mean advantage over its response tokens (0 for a row without response tokens)."""
    mask = response_mask.float()
    return (advantages.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def within_trajectory_std(step_adv: torch.Tensor, traj: torch.Tensor) -> float:
    """Mean over trajectories of more than one step of the (population) std of their steps' advantages
    (`step_adv` [N], `traj` [N]): 0 when every step of a trajectory gets the same credit (outcome-level
    estimators)."""
    from calmrl.algos.segments import group_index

    ids, num = group_index(traj)
    step_adv = step_adv.double()
    count = torch.bincount(ids, minlength=num).double()
    mean = torch.zeros(num, dtype=torch.float64).index_add_(0, ids, step_adv) / count
    var = torch.zeros(num, dtype=torch.float64).index_add_(0, ids, (step_adv - mean[ids]).square()) / count
    multi = count > 1
    return float(var[multi].sqrt().mean()) if bool(multi.any()) else 0.0


def summarize(batch: Batch, step_adv: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Per estimator: mean |A| over steps, fraction of steps with A > 0 (and < 0; |A| within float noise,
    SIGN_TOL, counts as 0), and the spread of A inside
    trajectories (mean over trajectories of the std of their steps' A: 0 when every step of a trajectory
    gets the same credit, as with grpo/rloo); plus the Pearson correlation of the estimators' step
    advantages (None where an estimator's advantages are constant)."""
    traj = batch.traj
    per: dict[str, dict[str, float]] = {}
    for name, a in step_adv.items():
        a = a.double()
        tol = SIGN_TOL * max(1.0, float(a.abs().max())) if a.numel() else 0.0  # float32 noise is not a sign
        per[name] = {
            "mean_abs": float(a.abs().mean()),
            "frac_positive": float((a > tol).double().mean()),
            "frac_negative": float((a < -tol).double().mean()),
            "within_traj_std": within_trajectory_std(a, traj),
        }
    names = list(step_adv)
    corr: dict[str, dict[str, float | None]] = {}
    for x in names:
        corr[x] = {}
        for y in names:
            corr[x][y] = _pearson(step_adv[x].double().numpy(), step_adv[y].double().numpy())
    return {"estimators": per, "correlation": corr}


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 2:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    if den <= 1e-12 * max(1.0, float(np.abs(x).max()) * float(np.abs(y).max())) * len(x):
        return None
    return float((dx * dy).sum() / den)


# ---------------------------------------------------------------- rollout
def task_seed(cfg) -> int:
    return int(cfg.task_seed) if cfg.get("task_seed") is not None else int(cfg.env.eval_seed_offset)


def resolve_policy(cfg, out_dir: Path) -> tuple[Path, str]:
    """The save_pretrained directory to inspect and where it came from: `checkpoint`, `policy.path`, or the
    tiny default (random weights) built into `out_dir/tiny_policy`."""
    from calmrl.envs import make_env
    from calmrl.errors import ConfigError
    from calmrl.learners.checkpoint import CheckpointError, CheckpointManager
    from calmrl.policy import PromptTemplate, build_tiny_policy
    from calmrl.tools.evaluate import _resolve_policy

    if cfg.get("checkpoint") or cfg.policy.get("path"):
        return _resolve_policy(cfg, CheckpointManager, CheckpointError, ConfigError)
    if cfg.policy.get("name", "tiny") != "tiny":
        raise ConfigError(f"policy={cfg.policy.name} needs policy.path=<model dir> (or give checkpoint=<run dir>)")
    words = list(make_env(cfg.env).vocabulary()) + PromptTemplate.vocabulary()
    return build_tiny_policy(Path(out_dir) / "tiny_policy", words, cfg.policy), "tiny default policy (random weights)"


def collect_group(cfg, policy_dir: Path | None, out_dir: Path) -> tuple[Batch, list[Trajectory], Any]:
    """Roll out one group: `cfg.group_size` sampled trajectories (`rollout.temperature`) of the task seed
    `task_seed(cfg)`, all with uid 0. `policy_dir` None builds the tiny default under `out_dir`.
    Returns (batch, trajectories, tokenizer); trajectories whose env crashed are kept (their `error` is set)."""
    from calmrl.data import build_batch
    from calmrl.envs import make_pool
    from calmrl.policy import PromptTemplate, load_policy
    from calmrl.rollout import HFGenerator, run_episodes
    from calmrl.runs import pick_device

    if policy_dir is None:
        policy_dir, _ = resolve_policy(cfg, out_dir)
    torch.manual_seed(int(cfg.seed))
    model, tokenizer = load_policy(
        policy_dir, cfg.policy.dtype, cfg.policy.trust_remote_code, pick_device(str(cfg.device))
    )
    template = PromptTemplate(tokenizer=tokenizer, **cfg.policy.template)
    generate = HFGenerator(
        model, tokenizer, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.generation_batch_size
    )
    g, seed = int(cfg.group_size), task_seed(cfg)
    envs = make_pool(cfg.env, g)
    try:
        trajs = run_episodes(envs, [seed] * g, [0] * g, template, generate, cfg.env.invalid_penalty, cfg.env.max_steps)
    finally:
        envs.close()
    return build_batch(trajs, tokenizer.pad_token_id), trajs, tokenizer


# ---------------------------------------------------------------- rendering helpers
def _rows_by_traj(batch: Batch) -> list[tuple[int, list[int]]]:
    """(trajectory index, its batch rows in step order) for every trajectory that has rows."""
    groups: dict[int, list[int]] = {}
    for r, t in enumerate(batch.traj.tolist()):
        groups.setdefault(t, []).append(r)
    step = batch.step.tolist()
    return [(t, sorted(rows, key=lambda r: step[r])) for t, rows in sorted(groups.items())]


def _response_positions(batch: Batch, row: int) -> list[int]:
    return batch.response_mask[row].nonzero().flatten().tolist()


def _token_texts(batch: Batch, row: int, tokenizer) -> list[str]:
    ids = batch.input_ids[row, _response_positions(batch, row)].tolist()
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


def _scale(advantages: torch.Tensor, mask: torch.Tensor) -> float:
    """Symmetric colour scale of one estimator: its largest |token advantage| (1 when all are 0)."""
    m = float((advantages.float().abs() * mask.float()).max()) if advantages.numel() else 0.0
    return m if m > 0 and math.isfinite(m) else 1.0


def advantage_colour(value: float, scale: float) -> tuple[int, int, int]:
    """Diverging colour: white at 0, towards red for positive and blue for negative, saturated at |value| = scale."""
    t = 0.0 if not math.isfinite(value) else max(-1.0, min(1.0, value / scale))
    end = _POSITIVE if t > 0 else _NEGATIVE
    a = abs(t)
    return tuple(round(255 + (c - 255) * a) for c in end)


def _style(value: float, scale: float) -> str:
    r, g, b = advantage_colour(value, scale)
    ink = "#fff" if abs(value) / scale > 0.6 else "#111"
    return f"background:rgb({r},{g},{b});color:{ink}"


def _fmt(value: float, digits: int = 3) -> str:
    """Signed, with no sign on a value that rounds to zero (float noise such as -1e-7 prints as 0.000)."""
    if not math.isfinite(value):
        return "nan"
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#111}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.4em 0}
th,td{border:1px solid #ccc;padding:.2em .45em;vertical-align:top;font-size:.9em}
th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.adv{text-align:right;font-variant-numeric:tabular-nums;min-width:4.5em}
.tok{white-space:pre;font-family:ui-monospace,Menlo,Consolas,monospace;padding:0 .1em;border-radius:2px}
.est{display:inline-block;min-width:7em;color:#555;font-size:.85em}
.meta td{border:none;padding:.1em .6em .1em 0}
.note{color:#8a5a00}.skip{color:#a00}
.bar{display:inline-block;width:16em;height:1em;vertical-align:middle;border:1px solid #999;
background:linear-gradient(to right,rgb(33,102,172),rgb(255,255,255),rgb(178,24,43))}
.ok{color:#1a7f37}.fail{color:#a00}
"""


def render_html(
    batch: Batch,
    trajectories: Sequence[Trajectory],
    credits: Mapping[str, torch.Tensor],
    tokenizer=None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """One self-contained HTML page (inline CSS, no scripts): a header, a legend, then one table per
    trajectory with one `<tr class="step">` per step. Every advantage cell and token span carries its value
    in `data-value` and its estimator in `data-estimator`. All text is escaped."""
    meta = dict(meta or {})
    esc = html.escape
    names = list(credits)
    scales = {n: _scale(credits[n], batch.response_mask) for n in names}
    step_adv = {n: step_advantages(credits[n], batch.response_mask).tolist() for n in names}
    token_adv = {n: credits[n].tolist() for n in names}
    rewards, anchors = batch.rewards.tolist(), batch.anchor_text

    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>calmrl inspect: {esc(str(meta.get('env', '')))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Credit assignment, side by side</h1>",
        '<table class="meta">',
    ]
    header = [
        ("env", meta.get("env", "")),
        ("task", meta.get("task", "")),
        ("task seed", meta.get("task_seed", "")),
        ("policy", meta.get("policy", "")),
        ("group", f"{len(trajectories)} trajectories at temperature {meta.get('temperature', '?')}"),
        ("estimators", ", ".join(names)),
    ]
    out += [f"<tr><td><b>{esc(k)}</b></td><td>{esc(str(v))}</td></tr>" for k, v in header]
    out.append("</table>")
    for name, note in meta.get("notes", {}).items():
        out.append(f'<p class="note">{esc(name)}: {esc(note)}</p>')
    for reason in meta.get("skipped", {}).values():
        out.append(f'<p class="skip">{esc(reason)}</p>')

    scale_txt = ", ".join(f"{esc(n)} ±{scales[n]:.3g}" for n in names)
    out.append(
        '<h2>Legend</h2><p><span style="color:rgb(33,102,172)"><b>blue</b></span> = negative advantage '
        '(the update pushes the step\'s tokens down) &nbsp;<span class="bar"></span>&nbsp; '
        '<span style="color:rgb(178,24,43)"><b>red</b></span> = positive (pushed up); white = 0. '
        "Each estimator has its own symmetric scale, saturating at its largest |token advantage| "
        f"({scale_txt}): compare colours within an estimator, and the printed numbers across estimators. "
        "A step's cell is the mean of its token advantages; the token lines show each response token coloured "
        "by that estimator's advantage (hover for the value).</p>"
    )

    by_traj = {t: rows for t, rows in _rows_by_traj(batch)}
    for k, traj in enumerate(trajectories):
        ok = '<span class="ok">success</span>' if traj.success else '<span class="fail">no success</span>'
        err = f' <span class="fail">env error: {esc(traj.error)}</span>' if traj.error else ""
        out.append(
            f'<h2 class="traj">Trajectory {k}: return {traj.episode_return:+.3f}, {ok}, {len(traj.steps)} steps'
            f" (seed {traj.seed}){err}</h2>"
        )
        rows = by_traj.get(k, [])
        if not rows:
            out.append("<p>no steps</p>")
            continue
        out.append(
            '<table class="steps"><tr><th>step</th><th>anchor</th><th>action</th><th>reward</th>'
            + "".join(f"<th>{esc(n)}</th>" for n in names)
            + "<th>response tokens, coloured by token advantage</th></tr>"
        )
        for r in rows:
            step = traj.steps[int(batch.step[r])] if int(batch.step[r]) < len(traj.steps) else None
            if step is None:
                shown = ""
            elif step.action is None:
                shown = f"unparsed: {step.response_text!r}"
            else:
                shown = f"{step.action} (invalid)" if step.invalid else step.action
            cells = "".join(
                f'<td class="adv" data-estimator="{esc(n)}" data-value="{step_adv[n][r]!r}" '
                f'style="{_style(step_adv[n][r], scales[n])}">{_fmt(step_adv[n][r])}</td>'
                for n in names
            )
            texts = _token_texts(batch, r, tokenizer)
            positions = _response_positions(batch, r)
            lines = []
            for n in names:
                spans = "".join(
                    f'<span class="tok" data-estimator="{esc(n)}" data-value="{token_adv[n][r][p]!r}" '
                    f'style="{_style(token_adv[n][r][p], scales[n])}" '
                    f'title="{esc(n)}: {_fmt(token_adv[n][r][p])}">{esc(txt) if txt else "&#8709;"}</span>'
                    for p, txt in zip(positions, texts, strict=True)
                )
                lines.append(f'<div><span class="est">{esc(n)}</span>{spans}</div>')
            out.append(
                f'<tr class="step"><td class="num">{int(batch.step[r])}</td><td>{esc(anchors[r])}</td>'
                f'<td>{esc(shown)}</td><td class="num">{rewards[r]:+.3f}</td>{cells}<td>{"".join(lines)}</td></tr>'
            )
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def render_heatmap(batch: Batch, credits: Mapping[str, torch.Tensor], path: Path, title: str = "") -> Path:
    """PNG heatmap of step advantages: rows = steps grouped by trajectory ("traj k step t"), columns =
    estimators, one symmetric diverging colour scale centred at 0 with a colourbar. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(credits)
    order = [r for _, rows in _rows_by_traj(batch) for r in rows]
    data = np.array([step_advantages(credits[n], batch.response_mask).numpy()[order] for n in names]).T
    data = data.reshape(len(order), len(names))
    finite = np.abs(data[np.isfinite(data)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    labels = [f"traj {int(batch.traj[r])} step {int(batch.step[r])}" for r in order]

    fig, ax = plt.subplots(figsize=(2.6 + 1.3 * len(names), 1.6 + 0.24 * len(order)))
    im = ax.imshow(data, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(names)), names)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(order)), labels, fontsize=7 if len(order) > 40 else 8)
    trajs = [int(batch.traj[r]) for r in order]
    for i in range(1, len(order)):
        if trajs[i] != trajs[i - 1]:
            ax.axhline(i - 0.5, color="black", linewidth=0.8)
    if len(order) * len(names) <= 400:
        for i in range(len(order)):
            for j in range(len(names)):
                v = data[i, j]
                ax.text(
                    j,
                    i,
                    _fmt(v, 2),
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if abs(v) > 0.6 * vmax else "black",
                )
    fig.colorbar(
        im, ax=ax, label="step advantage (mean over response tokens)", shrink=min(1.0, 12 / max(len(order), 1))
    )
    if title:
        ax.set_title(title, fontsize=9, pad=22)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_summary(summary: Mapping[str, Any], skipped: Mapping[str, str], notes: Mapping[str, str], console=None):
    """Terminal tables: per-estimator statistics, then the correlation of the estimators' step advantages."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(soft_wrap=True)
    table = Table(title="credit per estimator (over the group's steps)")
    table.add_column("estimator")
    table.add_column("mean |A|", justify="right")
    table.add_column("steps A>0", justify="right")
    table.add_column("steps A<0", justify="right")
    table.add_column("spread inside trajectories", justify="right")
    for name, s in summary["estimators"].items():
        table.add_row(
            name,
            f"{s['mean_abs']:.3f}",
            f"{s['frac_positive']:.2f}",
            f"{s['frac_negative']:.2f}",
            f"{s['within_traj_std']:.3f}",
        )
    console.print(table)
    names = list(summary["correlation"])
    if len(names) > 1:
        corr = Table(title="Pearson correlation of step advantages")
        corr.add_column("")
        for n in names:
            corr.add_column(n, justify="right")
        for x in names:
            vals = [summary["correlation"][x][y] for y in names]
            corr.add_row(x, *("n/a" if v is None else f"{v:+.2f}" for v in vals))
        console.print(corr)
    for name, note in notes.items():
        console.print(f"[yellow]{name}: {note}[/yellow]")
    for reason in skipped.values():
        console.print(f"[red]{reason}[/red]")
    return console


# ---------------------------------------------------------------- report and command
def build_report(
    batch: Batch,
    trajectories: Sequence[Trajectory],
    credits: Mapping[str, torch.Tensor],
    tokenizer,
    meta: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON-able record of everything shown: per trajectory, per step, per token."""
    names = list(credits)
    step_adv = {n: step_advantages(credits[n], batch.response_mask).tolist() for n in names}
    by_traj = {t: rows for t, rows in _rows_by_traj(batch)}
    out_trajs = []
    for k, traj in enumerate(trajectories):
        steps = []
        for r in by_traj.get(k, []):
            st = traj.steps[int(batch.step[r])]
            positions = _response_positions(batch, r)
            steps.append(
                {
                    "step": int(batch.step[r]),
                    "row": r,
                    "anchor": st.anchor,
                    "response": st.response_text,
                    "action": st.action,
                    "invalid": bool(st.invalid),
                    "reward": float(st.reward),
                    "penalty": float(st.penalty),
                    "token_ids": batch.input_ids[r, positions].tolist(),
                    "tokens": _token_texts(batch, r, tokenizer),
                    "advantage": {n: _num(step_adv[n][r]) for n in names},
                    "token_advantages": {n: [_num(v) for v in credits[n][r, positions].tolist()] for n in names},
                }
            )
        out_trajs.append(
            {
                "index": k,
                "uid": traj.uid,
                "seed": traj.seed,
                "return": traj.episode_return,
                "env_return": traj.env_return,
                "success": bool(traj.success),
                "error": traj.error,
                "steps": steps,
            }
        )
    return {**meta, "estimators": names, "summary": json_safe(summary), "trajectories": out_trajs}


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def json_safe(obj):
    """`obj` (nested mappings, lists, tuples and scalars) with every non-finite float as None, for strict JSON."""
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, Mapping):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def run_inspect_command(cfg, out_dir: Path) -> dict[str, Any]:
    """`calmrl inspect`: resolve the policy (checkpoint / policy.path / tiny default), roll out one group,
    run every selected estimator on it, write credit.html, credit_heatmap.png and credit.json into `out_dir`,
    print the summary and the paths. Returns {"html", "heatmap", "json": paths as str, "report": the JSON}."""
    from omegaconf import OmegaConf

    from calmrl.errors import ConfigError

    out_dir = Path(out_dir)
    run, skipped, notes = plan_estimators(list(cfg.estimators))  # unknown names fail before any rollout
    if not run:
        raise ConfigError(
            "none of the selected estimators can be inspected: " + "; ".join(skipped.values())
            if skipped
            else "estimators is empty; give e.g. estimators=[grpo,rloo,gigpo]"
        )
    if int(cfg.group_size) < 1:
        raise ConfigError(f"group_size must be >= 1, got {cfg.group_size}")
    if cfg.cluster.get("num_threads"):
        torch.set_num_threads(int(cfg.cluster.num_threads))
    out_dir.mkdir(parents=True, exist_ok=True)

    policy_dir, source = resolve_policy(cfg, out_dir)
    batch, trajs, tokenizer = collect_group(cfg, policy_dir, out_dir)
    overrides = cfg.get("algo_overrides")
    overrides = OmegaConf.to_container(overrides, resolve=True) if overrides is not None else None
    credits = credit_table(batch, run, overrides)
    summary = summarize(batch, {n: step_advantages(a, batch.response_mask) for n, a in credits.items()})
    meta = {
        "env": cfg.env.name,
        "env_config": OmegaConf.to_container(cfg.env, resolve=True),
        "task": trajs[0].task if trajs else "",
        "task_seed": task_seed(cfg),
        "policy": str(policy_dir),
        "source": source,
        "group_size": int(cfg.group_size),
        "temperature": float(cfg.rollout.temperature),
        "seed": int(cfg.seed),
        "skipped": skipped,
        "notes": notes,
        "algo_configs": {n: OmegaConf.to_container(algo_config(n, (overrides or {}).get(n))) for n in run},
    }
    report = build_report(batch, trajs, credits, tokenizer, meta, summary)
    paths = {"html": out_dir / HTML_FILE, "heatmap": out_dir / HEATMAP_FILE, "json": out_dir / JSON_FILE}
    paths["html"].write_text(render_html(batch, trajs, credits, tokenizer, meta), encoding="utf-8")
    render_heatmap(
        batch,
        credits,
        paths["heatmap"],
        title=f"{cfg.env.name}, task seed {meta['task_seed']}, {len(trajs)} trajectories",
    )
    paths["json"].write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")

    console = print_summary(summary, skipped, notes)
    wins = sum(t.success for t in trajs)
    console.print(
        f"{cfg.env.name} task seed {meta['task_seed']}: {len(trajs)} trajectories, {len(batch)} steps, "
        f"{wins} successful; policy: {source}\n" + "\n".join(f"{k}: {p}" for k, p in paths.items())
    )
    return {**{k: str(p) for k, p in paths.items()}, "report": report}


def _conf_dir() -> Path:
    """The shipped config tree: `calmrl/conf` in a wheel, the repository's `conf/` in an editable install."""
    from importlib import resources

    packaged = resources.files("calmrl") / "conf"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "conf"
