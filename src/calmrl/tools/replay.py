"""`calmrl replay`: compare credit-assignment estimators on the same recorded batches.

    calmrl train trainer.total_iters=20 trainer.record_rollouts=1          # record every iteration's batch
    calmrl replay run=runs/gridworld-grpo-seed0 estimators=[grpo,rloo,gigpo]

A training curve mixes the estimator with the seed: two runs with different estimators see different rollouts
from the first update on. Replay fixes the rollouts (the batches a run recorded, `calmrl.recording`) and asks each
estimator the same question on each batch: which direction would you move the policy, and how reliably?

For every recorded batch b and estimator e:

- **advantages** A_e [N, L], exactly as training computes them (the shaped batch, folded and penalised the
  estimator's way), with their statistics per token and per step and the `credit/` checks
  (`calmrl.credit_checks`);
- **the policy-gradient estimate** it implies at one fixed set of weights theta (`checkpoint`, default the run's
  newest checkpoint):

      g_e,b = (1 / T) sum_{tokens t} A_t w_t grad log pi_theta(a_t | s_t)        T = response tokens of the batch

  with w_t = min(pi_theta / pi_sample, max_is_weight) the (truncated) importance weight of the recorded token
  under theta (1 when theta sampled the batch), i.e. the gradient of PPO's unclipped surrogate at theta;
- **its noise across resampled groups**: the batch is G groups, g_e,b = mean_j z_j with z_j = G x (group j's
  share of the sum); resampling groups with replacement gives a batch estimate of variance
  tr Var = sum_j ||z_j - g||^2 / (G (G - 1)) (the unbiased form), and the signal-to-noise ratio
  SNR_b = sqrt(||g_e,b||^2 - tr Var) / sqrt(tr Var) (E||g||^2 = ||E g||^2 + tr Var: pure noise scores 0, not 1);
- **its cosine with a reference gradient**: by default the mean, over the other batches, of the `reference`
  estimator's estimate (leave-one-batch-out, so no batch is compared with itself); with `reference_rollouts=K`
  the reference estimator on K fresh trajectories per task of the batch, sampled at theta.

Across batches the report gives the median and range of each per-batch number, the pooled SNR (the mean
gradient's debiased norm against one batch's noise: on batches drawn from one policy, an estimate of the SNR of
one batch's estimate), the noise measured across batches, and the cosine of the mean gradient with the reference.
With `fresh_batches=N` the batches are not the recordings but N new ones sampled at theta on the run's tasks.

Outputs, in the output directory: replay.md and replay.csv (one row per estimator), replay.png (per-batch SNR,
cosine with the reference, advantage per step by outcome) and replay.json (everything, per batch).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from calmrl.algos.segments import group_index
from calmrl.credit_checks import credit_metrics, trajectory_outcome
from calmrl.data import Batch, apply_penalty_rule, fold_shaping, penalty_rule

JSON_FILE, TABLE_FILE, CSV_FILE, PLOT_FILE = "replay.json", "replay.md", "replay.csv", "replay.png"


# ---------------------------------------------------------------- estimators
def replay_problem(name: str, recorded: set[str]) -> str | None:
    """Why estimator `name` cannot be replayed on recordings holding the batch fields `recorded`, or None.
    Unknown names raise the algo registry's error (it lists every algo)."""
    from calmrl.algos import ALGOS

    method = ALGOS.get(name)
    if method.offline:
        return f"{name} trains on preference pairs, not on rollouts"
    if method.state is not None:
        return (
            f"{name} keeps state across iterations, built from the run's whole history, which a recording does not hold"
        )
    if method.needs_critic and "values" not in recorded:
        return f"{name} needs critic values, which only a run with a critic records (e.g. algo=ppo)"
    return None


def estimator_configs(names: Sequence[str], run_algo: Mapping, overrides: Mapping | None = None) -> dict[str, Any]:
    """{name: algo config}: the recorded run's own algo config for its algo (so replay reproduces its advantages),
    every other estimator's default (`conf/algo/<name>.yaml`); then `overrides[name]` on top."""
    from omegaconf import OmegaConf

    from calmrl.tools.inspect_credit import algo_config

    out = {}
    for name in names:
        cfg = OmegaConf.create(dict(run_algo)) if name == run_algo.get("name") else algo_config(name)
        extra = (overrides or {}).get(name)
        out[name] = OmegaConf.merge(cfg, extra) if extra else cfg
    return out


def estimator_view(batch: Batch, name: str, cfg) -> Batch:
    """The recorded (shaped, unfolded) batch as estimator `name` (config `cfg`) sees it in training, folded and
    penalised its way, with its `advantages` [N, L] filled in; the recorded batch itself is not changed."""
    from calmrl.algos import ALGOS

    method = ALGOS.get(name)
    view = Batch(**vars(batch))
    view.advantages = view.returns = None
    view = apply_penalty_rule(fold_shaping(view, method.reads_token_rewards), penalty_rule(cfg))
    view.advantages = method(view, cfg).detach().float()
    return view


def replay_advantages(batch: Batch, name: str, cfg) -> torch.Tensor:
    """advantages [N, L] of estimator `name` on a recorded batch, computed the way training computes them."""
    return estimator_view(batch, name, cfg).advantages


# ---------------------------------------------------------------- advantage statistics
def advantage_stats(batch: Batch, advantages: torch.Tensor) -> dict[str, Any]:
    """Per-token and per-step statistics of `advantages` [N, L] on `batch`, the `credit/` checks, and the
    advantage per step position split by outcome (`mass_by_step`: for each step index, the mean step advantage
    of rows whose trajectory's return is above its group's mean ("better"), and below it ("worse");
    `credit_checks.trajectory_outcome`)."""
    mask = batch.response_mask.bool()
    tokens = advantages[mask].double()
    steps = (advantages * mask).sum(1).double() / mask.sum(1).clamp(min=1)
    stats = {
        "token_mean": float(tokens.mean()) if tokens.numel() else 0.0,
        "token_std": float(tokens.std()) if tokens.numel() > 1 else 0.0,
        "token_abs_mean": float(tokens.abs().mean()) if tokens.numel() else 0.0,
        "step_abs_mean": float(steps.abs().mean()),
        "within_traj_step_std": _within_trajectory_std(steps, batch.traj),
    }
    checked = Batch(**vars(batch))
    checked.advantages = advantages
    stats.update({k.removeprefix("credit/"): v for k, v in credit_metrics(checked).items()})
    outcome = trajectory_outcome(batch)[batch.traj]
    by_step: dict[int, dict[str, float | None]] = {}
    for t in batch.step.unique().tolist():
        at = batch.step == t
        better, worse = at & (outcome > 0), at & (outcome < 0)
        by_step[int(t)] = {
            "better": float(steps[better].mean()) if bool(better.any()) else None,
            "worse": float(steps[worse].mean()) if bool(worse.any()) else None,
            "rows": int(at.sum()),
        }
    stats["mass_by_step"] = by_step
    return stats


def _within_trajectory_std(step_adv: torch.Tensor, traj: torch.Tensor) -> float:
    """Mean over trajectories of more than one step of the (population) std of their steps' advantages: 0 when
    every step of a trajectory gets the same credit (outcome-level estimators)."""
    ids, num = group_index(traj)
    count = torch.bincount(ids, minlength=num).double()
    mean = torch.zeros(num, dtype=torch.float64).index_add_(0, ids, step_adv) / count
    var = torch.zeros(num, dtype=torch.float64).index_add_(0, ids, (step_adv - mean[ids]).square()) / count
    multi = count > 1
    return float(var[multi].sqrt().mean()) if bool(multi.any()) else 0.0


# ---------------------------------------------------------------- policy gradients
@dataclass
class BatchGradient:
    """One estimator's policy-gradient estimate on one batch of G groups: g = mean_j z_j."""

    mean: torch.Tensor  # [P] float64, g
    group_sq: float  # sum_j ||z_j||^2
    groups: int  # G

    @property
    def noise_var(self) -> float:
        """tr Var(g) over resampled groups, sum_j ||z_j - g||^2 / (G (G - 1)); nan for G < 2."""
        if self.groups < 2:
            return math.nan
        spread = self.group_sq - self.groups * float(self.mean.square().sum())
        return max(spread, 0.0) / (self.groups * (self.groups - 1))

    @property
    def snr(self) -> float:
        """||E g|| / sqrt(tr Var g), with ||E g||^2 estimated without the noise's bias as ||g||^2 - tr Var (a pure
        noise estimate scores about 0, not about 1); nan for G < 2."""
        return snr_from(float(self.mean.square().sum()) - self.noise_var, self.noise_var)


def snr_from(signal_sq: float, noise_var: float) -> float:
    """sqrt(max(signal_sq, 0) / noise_var); nan when the noise is not positive (or not known)."""
    if not (noise_var > 0):
        return math.nan
    return math.sqrt(max(signal_sq, 0.0) / noise_var)


def gradient_parameters(model, pattern: str | None = None) -> list[torch.nn.Parameter]:
    """The trainable parameters the gradient is measured on: all, or those whose name matches `pattern` (a regular
    expression, `re.search`; a billion-parameter policy's full gradient would need 8 bytes a parameter per
    estimator)."""
    import re

    from calmrl.errors import ConfigError

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is None:
        return [p for _, p in named]
    chosen = [p for n, p in named if re.search(pattern, n)]
    if not chosen:
        names = ", ".join(n for n, _ in named[:6])
        raise ConfigError(f"params={pattern!r} matches no trainable parameter of the policy (its first: {names}, ...)")
    return chosen


def batch_gradients(
    model,
    batch: Batch,
    advantages: Mapping[str, torch.Tensor],
    max_is_weight: float | None = None,
    params: Sequence[torch.nn.Parameter] | None = None,
) -> tuple[dict[str, BatchGradient], dict[str, float]]:
    """Each estimator's policy-gradient estimate at `model`'s weights on `batch` (see the module docstring), and
    the importance weights' diagnostics (is_weight_mean, is_truncated_frac, is_ess_frac: Kish's effective sample
    size over the response tokens, as a fraction of them; 1 when the model sampled the batch).

    advantages: {name: [N, L]}. One forward pass per group of rows, one backward per estimator and group; the
    gradient is the ascent direction of sum_t A_t w_t log pi(a_t) / T, over `params` (default: every trainable
    parameter, `gradient_parameters`).
    """
    from calmrl.learners.torch import token_logprobs

    params = list(params) if params is not None else gradient_parameters(model)
    device = params[0].device
    group, num_groups = group_index(batch.uid)
    mask = batch.response_mask.float()
    tokens = mask.sum().clamp(min=1.0)
    sums = {name: torch.zeros(sum(p.numel() for p in params), dtype=torch.float64) for name in advantages}
    squares = dict.fromkeys(advantages, 0.0)
    w_sum = w_sq = truncated = 0.0
    was_training = model.training
    model.eval()  # no dropout: the gradient is a function of the weights and the batch alone
    try:
        for j in range(num_groups):
            rows = (group == j).nonzero().squeeze(1)
            width = int(batch.attention_mask[rows].sum(1).max())
            ids = batch.input_ids[rows, :width].to(device)
            attention = batch.attention_mask[rows, :width].to(device)
            m = mask[rows, :width].to(device)
            logp = token_logprobs(model, ids, attention)
            ratio = torch.exp(logp.detach() - batch.old_logprobs[rows, :width].to(device)) * m
            weight = ratio if max_is_weight is None else ratio.clamp(max=float(max_is_weight))
            w_sum += float(weight.sum())
            w_sq += float(weight.square().sum())
            truncated += float(((ratio > weight) & (m > 0)).sum())
            names = list(advantages)
            for k, name in enumerate(names):
                objective = (advantages[name][rows, :width].to(device) * weight * logp).sum() / tokens
                grads = torch.autograd.grad(objective, params, retain_graph=k < len(names) - 1, allow_unused=True)
                flat = (
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p)).reshape(-1)
                            for g, p in zip(grads, params, strict=True)
                        ]
                    )
                    .double()
                    .cpu()
                )
                sums[name] += flat
                squares[name] += float((num_groups * flat).square().sum())
    finally:
        model.train(was_training)
    count = float(tokens)
    diagnostics = {
        "is_weight_mean": w_sum / count,
        "is_truncated_frac": truncated / count,
        "is_ess_frac": (w_sum**2 / w_sq) / count if w_sq > 0 else 0.0,
    }
    return {name: BatchGradient(sums[name], squares[name], num_groups) for name in advantages}, diagnostics


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else math.nan


def gradient_summary(
    gradients: Sequence[Mapping[str, BatchGradient]], reference: str | torch.Tensor | Sequence[torch.Tensor]
) -> dict[str, dict[str, Any]]:
    """Per estimator, over the batches: per-batch ||g||, noise, SNR and cosine with the reference, and the pooled
    numbers (see the module docstring). `reference`: an estimator's name (its estimate averaged over the other
    batches; with one batch, over that batch), one [P] gradient for every batch (a known true gradient), or one
    [P] gradient per batch (a high-sample estimate on each batch's tasks; the pooled cosine uses their mean)."""
    names = list(gradients[0])
    num = len(gradients)
    if isinstance(reference, str):
        ref_total = torch.stack([g[reference].mean for g in gradients]).sum(0)

        def reference_for(b: int) -> torch.Tensor:
            own = gradients[b][reference].mean
            return (ref_total - own) / (num - 1) if num > 1 else own

        pooled_reference = ref_total / num
    elif isinstance(reference, Sequence):
        references = list(reference)

        def reference_for(b: int) -> torch.Tensor:
            return references[b]

        pooled_reference = torch.stack(references).mean(0)
    else:

        def reference_for(b: int) -> torch.Tensor:
            return reference

        pooled_reference = reference
    out = {}
    for name in names:
        per = [g[name] for g in gradients]
        stacked = torch.stack([g.mean for g in per])
        mean = stacked.mean(0)
        noise = [g.noise_var for g in per]
        finite_noise = [v for v in noise if math.isfinite(v)]
        pooled_noise = statistics.fmean(finite_noise) if finite_noise else math.nan
        across = float((stacked - mean).square().sum(1).sum()) / (num - 1) if num > 1 else math.nan
        out[name] = {
            "grad_norm": [float(g.mean.norm()) for g in per],
            "noise_std": [math.sqrt(v) if math.isfinite(v) else math.nan for v in noise],
            "snr": [g.snr for g in per],
            "cos_reference": [cosine(per[b].mean, reference_for(b)) for b in range(num)],
            # ||E g||^2 from the mean of the B batches (whose own noise is tr Var / B), against one batch's noise
            "pooled_snr": snr_from(float(mean.square().sum()) - pooled_noise / num, pooled_noise),
            "pooled_noise_std": math.sqrt(pooled_noise) if pooled_noise >= 0 else math.nan,
            "across_batch_noise_std": math.sqrt(across) if math.isfinite(across) else math.nan,
            "mean_grad_norm": float(mean.norm()),
            "mean_grad_cos_reference": cosine(mean, pooled_reference),
            "mean_grad": mean,
        }
    for name in names:  # how far apart the estimators point, on the same batches
        out[name]["mean_grad_cos"] = {other: cosine(out[name]["mean_grad"], out[other]["mean_grad"]) for other in names}
    return out


# ---------------------------------------------------------------- the command
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


class FreshRollouts:
    """Batches sampled at the replay weights on the run's tasks, as one training iteration of the run samples them:
    its env, prompt template, rollout temperature and episode program; task seeds as `calmrl.runs.train_seeds`."""

    def __init__(self, model, tokenizer, run_cfg: Mapping):
        from omegaconf import OmegaConf

        from calmrl.policy import PromptTemplate
        from calmrl.rollout import HFGenerator

        self.run = OmegaConf.create(dict(run_cfg))
        self.tokenizer = tokenizer
        self.template = PromptTemplate(tokenizer=tokenizer, **self.run.policy.template)
        rollout = self.run.rollout
        self.generate = HFGenerator(
            model, tokenizer, rollout.max_new_tokens, rollout.temperature, rollout.generation_batch_size
        )
        self.pool, self.pool_size = None, 0

    def task_seeds(self, seed: int, it: int) -> list[int]:
        from calmrl.runs import train_seeds

        return train_seeds(seed, it, int(self.run.rollout.num_groups), int(self.run.env.eval_seed_offset))

    def sample(self, task_seeds: Sequence[int], per_task: int, rng: Sequence[int]) -> Batch:
        """`per_task` trajectories of each task (group uid = its index), sampled with torch seeded from `rng`;
        trajectories whose env crashed are left out, as training leaves them out."""
        import numpy as np

        from calmrl.algos import ALGOS
        from calmrl.data import build_batch
        from calmrl.envs import make_pool
        from calmrl.rollout import play_episodes

        seeds = [s for s in task_seeds for _ in range(per_task)]
        uids = [u for u in range(len(task_seeds)) for _ in range(per_task)]
        if len(seeds) > self.pool_size:
            self.close()
            self.pool, self.pool_size = make_pool(self.run.env, len(seeds)), len(seeds)
        torch.manual_seed(int(np.random.SeedSequence(list(rng)).generate_state(1)[0]))
        trajectories = play_episodes(
            ALGOS.get(self.run.algo.name).rollout,
            self.pool,
            seeds=seeds,
            uids=uids,
            template=self.template,
            generate=self.generate,
            algo_cfg=self.run.algo,
            env_cfg=self.run.env,
            tokenizer=self.tokenizer,
        )
        return build_batch([t for t in trajectories if t.error is None], self.tokenizer.pad_token_id)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


def run_config(run_dir: Path, files: Mapping[int, Path]) -> dict:
    """The resolved config of the run: from its recordings, or from `.hydra/config.yaml` (a run without any)."""
    from omegaconf import OmegaConf

    from calmrl.errors import ConfigError
    from calmrl.recording import load_batch

    if files:
        return load_batch(next(iter(files.values())))[1]["config"]
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"run={run_dir} is not a training run (no .hydra/config.yaml)")
    return OmegaConf.to_container(OmegaConf.load(saved), resolve=True)


def run_replay_command(cfg, out_dir: Path) -> dict[str, Any]:
    """`calmrl replay`: the run's recorded batches (or `fresh_batches` sampled at the replay weights), every
    estimator's advantages and policy-gradient estimates on each, replay.{md,csv,png,json} into `out_dir`.
    Returns the report."""
    import time

    from omegaconf import OmegaConf
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from calmrl.errors import ConfigError
    from calmrl.recording import load_batch
    from calmrl.rollout.mismatch import mismatch_metrics
    from calmrl.schemas.shaper import shapes_rewards

    started = time.perf_counter()
    console = Console(stderr=True)
    run_dir = Path(cfg.run).expanduser()
    fresh_batches, reference_rollouts = int(cfg.fresh_batches), int(cfg.reference_rollouts)
    files = select_recordings(run_dir, cfg.get("batches"), required=not fresh_batches)
    run_cfg = run_config(run_dir, files)
    if (fresh_batches or reference_rollouts) and shapes_rewards(OmegaConf.create(run_cfg["shaper"])):
        raise ConfigError(
            f"fresh_batches and reference_rollouts sample new episodes, and replay does not rebuild the run's "
            f"shaper={run_cfg['shaper']['name']}; replay its recorded batches with reference_rollouts=0"
        )
    names = list(dict.fromkeys(str(n) for n in cfg.estimators))
    reference = str(cfg.reference)
    computed = list(dict.fromkeys([*names, reference]))
    if fresh_batches:
        fields = {"input_ids", "old_logprobs"}  # what a freshly built batch holds: no reference, no critic
    else:
        fields = {k for k, v in vars(load_batch(next(iter(files.values())))[0]).items() if v is not None}
    for name in computed:
        problem = replay_problem(name, fields)
        if problem:
            raise ConfigError(f"cannot replay {name}: {problem}")
    overrides = OmegaConf.to_container(cfg.algo_overrides, resolve=True) if cfg.get("algo_overrides") else None
    configs = estimator_configs(computed, run_cfg["algo"], overrides)
    # the tasks: a recording's are its iteration's in the run; fresh batches take iteration it's of `seed`
    seed = int(run_cfg["seed"] if cfg.get("seed") is None or not fresh_batches else cfg.seed)

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    model, tokenizer, weights, short = load_replay_policy(cfg, run_dir, run_cfg)
    params = gradient_parameters(model, cfg.get("params"))
    reference_model = None
    if any(_method(n).needs_ref for n in computed) and "ref_logprobs" not in fields:
        reference_model = _load(base_policy_path(run_dir, run_cfg), run_cfg, str(cfg.device))[0]  # the run's start
    fresh = FreshRollouts(model, tokenizer, run_cfg) if fresh_batches or reference_rollouts else None
    group_size = int(run_cfg["rollout"]["group_size"])

    def batches():
        """(iteration, batch, its metadata) to replay, loaded or sampled one at a time."""
        if not fresh_batches:
            for it, path in files.items():
                batch, meta, extra = load_batch(path)
                if "learner_logprobs" in extra:  # the engine / learner gap of that iteration, as training logged it
                    gap = mismatch_metrics(extra["learner_logprobs"], batch.old_logprobs, batch.response_mask)
                    meta = {**meta, **{k.replace("mismatch/", "engine_learner_"): v for k, v in gap.items()}}
                yield it, batch, meta
            return
        for it in range(1, fresh_batches + 1):  # iteration it's tasks, sampled at the replay weights
            yield it, fresh.sample(fresh.task_seeds(seed, it), group_size, [seed, it, 0]), {"policy_version": None}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict[str, list[dict]] = {n: [] for n in computed}
    gradients: list[dict[str, BatchGradient]] = []
    fresh_references: list[torch.Tensor] = []
    diagnostics: list[dict[str, Any]] = []
    run_algo = run_cfg["algo"]["name"]
    total = fresh_batches or len(files)
    progress = Progress(
        TextColumn("replay"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("replay", total=total)
            for it, batch, batch_meta in batches():
                if reference_model is not None:
                    batch.ref_logprobs = reference_logprobs(reference_model, batch)
                views = {n: estimator_view(batch, n, configs[n]) for n in computed}
                advantages = {n: view.advantages for n, view in views.items()}
                matches = None  # the run's own algo recomputed from the recording gives what the run trained on
                if run_algo in advantages and batch.advantages is not None:
                    matches = bool(torch.allclose(advantages[run_algo], batch.advantages.float(), atol=1e-6))
                for n in computed:
                    stats[n].append(advantage_stats(views[n], advantages[n]))  # on the returns it saw
                grads, weights_info = batch_gradients(model, batch, advantages, cfg.get("max_is_weight"), params)
                gradients.append(grads)
                info = {
                    "iteration": it,
                    "policy_version": batch_meta.get("policy_version"),
                    "rows": len(batch),
                    "groups": grads[computed[0]].groups,
                    "run_advantages_reproduced": matches,
                    **weights_info,
                    **{k: v for k, v in batch_meta.items() if k.startswith("engine_learner_")},
                }
                if reference_rollouts:
                    big = fresh.sample(fresh.task_seeds(seed, it), reference_rollouts, [seed, it, 1])
                    if reference_model is not None:
                        big.ref_logprobs = reference_logprobs(reference_model, big)
                    ref_advantages = {reference: replay_advantages(big, reference, configs[reference])}
                    ref_grad = batch_gradients(model, big, ref_advantages, params=params)[0][reference]
                    fresh_references.append(ref_grad.mean)
                    info["reference_rows"], info["reference_snr"] = len(big), ref_grad.snr
                diagnostics.append(info)
                progress.advance(task)
    finally:
        if fresh is not None:
            fresh.close()

    summary = gradient_summary(gradients, fresh_references if reference_rollouts else reference)
    if reference_rollouts:
        described = (
            f"{reference}'s gradient on {reference_rollouts} fresh trajectories per task of each batch's tasks, "
            "sampled at the same weights"
        )
    else:
        described = f"{reference}'s gradient averaged over the other replayed batches"
    report: dict[str, Any] = {
        "run": str(run_dir),
        "source": f"{fresh_batches} fresh batches (seed {seed}) at the replay weights" if fresh_batches else "recorded",
        "batches": len(gradients),
        "iterations": [d["iteration"] for d in diagnostics],
        "weights": weights,
        "weights_short": short,
        "reference": reference,
        "reference_description": described,
        "max_is_weight": cfg.get("max_is_weight"),
        "params": cfg.get("params"),
        "num_params": sum(p.numel() for p in params),
        "algo_configs": {n: OmegaConf.to_container(configs[n], resolve=True) for n in computed},
        "estimators": {},
        "per_batch": {},
        "batch_info": diagnostics,
    }
    for n in names:
        scalar_keys = [k for k, v in stats[n][0].items() if isinstance(v, float | int)]
        g = summary[n]
        report["estimators"][n] = {
            "advantages": {k: spread([s[k] for s in stats[n]]) for k in scalar_keys},
            "gradient": {
                "grad_norm": spread(g["grad_norm"]),
                "noise_std": spread(g["noise_std"]),
                "snr": spread(g["snr"]),
                "cos_reference": spread(g["cos_reference"]),
                "pooled_snr": g["pooled_snr"],
                "pooled_noise_std": g["pooled_noise_std"],
                "across_batch_noise_std": g["across_batch_noise_std"],
                "mean_grad_norm": g["mean_grad_norm"],
                "mean_grad_cos_reference": g["mean_grad_cos_reference"],
                "mean_grad_cos": {o: c for o, c in g["mean_grad_cos"].items() if o in names},
            },
            "mass_by_step": _aggregate_mass([s["mass_by_step"] for s in stats[n]]),
        }
        report["per_batch"][n] = {
            "snr": g["snr"],
            "cos_reference": g["cos_reference"],
            "grad_norm": g["grad_norm"],
            **{k: [s[k] for s in stats[n]] for k in scalar_keys},
        }
    report["seconds"] = time.perf_counter() - started
    report = _clean(report)
    paths = {
        "table": out_dir / TABLE_FILE,
        "csv": out_dir / CSV_FILE,
        "plot": out_dir / PLOT_FILE,
        "json": out_dir / JSON_FILE,
    }
    write_tables(report, paths["table"], paths["csv"])
    render_plot(report, paths["plot"])
    paths["json"].write_text(json.dumps(report, indent=2), encoding="utf-8")
    print_table(report, console)
    reproduced = [d["run_advantages_reproduced"] for d in diagnostics if d["run_advantages_reproduced"] is not None]
    if reproduced and not all(reproduced):
        console.print(
            f"[yellow]warning: the run's own algo ({run_algo}) recomputed on {reproduced.count(False)} of "
            f"{len(reproduced)} recordings differs from the advantages the run trained on"
        )
    console.print(f"replayed {report['batches']} batches in {report['seconds']:.0f} s")
    console.print("\n".join(f"{k}: {p}" for k, p in paths.items()))
    return report


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


def select_recordings(run_dir: Path, batches: int | None, required: bool = True) -> dict[int, Path]:
    """The recordings to replay: all of `run_dir`'s, or its newest `batches`. `required`: none is an error."""
    from calmrl.errors import ConfigError
    from calmrl.recording import DIRNAME, recorded_iterations

    if not run_dir.is_dir():
        raise ConfigError(f"run={run_dir} is not a directory; give a training run's directory")
    files = recorded_iterations(run_dir)
    if not files and required:
        raise ConfigError(
            f"run={run_dir} has no recorded batches (no {DIRNAME}/iter_*.safetensors); train it with "
            "trainer.record_rollouts=1 (docs/recording.md), or sample new ones with fresh_batches=N"
        )
    if batches is not None:
        files = dict(list(files.items())[-int(batches) :])
    return files


def load_replay_policy(cfg, run_dir: Path, run_cfg: Mapping) -> tuple[Any, Any, str, str]:
    """(the model whose gradients replay measures, its tokenizer, a description, a short name). `checkpoint`: None = the run's
    newest checkpoint (its initial policy when it has none), `base` = its initial policy, else a run or
    checkpoint directory."""
    from omegaconf import OmegaConf

    from calmrl.errors import ConfigError
    from calmrl.learners.checkpoint import CheckpointError, CheckpointManager
    from calmrl.tools.evaluate import _resolve_policy

    choice = cfg.get("checkpoint")
    if choice is None:
        checkpoints = run_dir / "checkpoints"
        choice = str(run_dir) if checkpoints.is_dir() and CheckpointManager(checkpoints).latest() else "base"
    if choice == "base":
        path, description, short = base_policy_path(run_dir, run_cfg), "the run's initial policy", "initial policy"
    else:
        shim = OmegaConf.create({"checkpoint": str(choice), "policy": {"path": None}})
        path, description = _resolve_policy(shim, CheckpointManager, CheckpointError, ConfigError)
        short = path.parent.name if path.name == "policy" else path.name  # step_XXXXXXXX
    model, tokenizer = _load(path, run_cfg, str(cfg.device))
    return model, tokenizer, f"{description} ({path})", short


def base_policy_path(run_dir: Path, run_cfg: Mapping) -> Path:
    """The run's initial policy: its `policy.path`, or the tiny model it built into its directory."""
    from calmrl.errors import ConfigError

    given = run_cfg["policy"].get("path")
    path = Path(given).expanduser() if given else run_dir / "tiny_policy"
    if not path.is_dir():
        raise ConfigError(f"the run's initial policy {path} is gone; give checkpoint=<a checkpoint directory>")
    return path


def _load(path: Path, run_cfg: Mapping, device: str):
    from calmrl.policy import load_policy
    from calmrl.runs import pick_device

    policy = run_cfg["policy"]
    return load_policy(
        path, policy.get("dtype", "float32"), policy.get("trust_remote_code", False), pick_device(device)
    )


@torch.no_grad()
def reference_logprobs(model, batch: Batch, rows_per_pass: int = 64) -> torch.Tensor:
    """[N, L] log-probs of the batch's response tokens under `model` (0 elsewhere), for estimators with a KL term
    on recordings of runs that had no reference."""
    from calmrl.learners.torch import token_logprobs

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = [
        token_logprobs(
            model,
            batch.input_ids[s : s + rows_per_pass].to(device),
            batch.attention_mask[s : s + rows_per_pass].to(device),
        )
        .float()
        .cpu()
        for s in range(0, len(batch), rows_per_pass)
    ]
    model.train(was_training)
    return torch.cat(parts) * batch.response_mask


def _method(name: str):
    from calmrl.algos import ALGOS

    return ALGOS.get(name)


def _clean(obj):
    """JSON-able: tensors dropped (the mean gradients), non-finite floats as None."""
    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj
