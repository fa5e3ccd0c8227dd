"""`calmrl replay`: compare credit-assignment estimators on the same recorded batches.

    calmrl train trainer.total_iters=20 trainer.record_rollouts=1          # record every iteration's batch
    calmrl replay run=runs/gridworld-grpo-seed0 estimators=[grpo,rloo,gigpo]

A training curve mixes the estimator with the seed: two runs with different estimators see different rollouts
from the first update on. Replay fixes the rollouts (the batches a run recorded, `calmrl.recording`) and asks each
estimator the same question on each batch: which direction would you move the policy, and how reliably? What it
computes on a batch is `calmrl.tools.replay_stats`; the outputs are `calmrl.tools.replay_report`.

This module finds the batches (the run's recordings, or with `fresh_batches=N` new ones sampled at the replay
weights on the run's tasks), the weights (`checkpoint`: the run's newest checkpoint by default) and, with
`reference_rollouts=K`, the high-sample reference (the reference estimator on K fresh trajectories per task of
each batch), and runs every estimator on every batch.

Outputs, in the output directory: replay.md and replay.csv (one row per estimator), replay.png (per-batch SNR,
cosine with the reference, advantage per step by outcome) and replay.json (everything, per batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from calmrl.data import Batch
from calmrl.tools.replay_report import build_report, print_table, write_outputs
from calmrl.tools.replay_stats import (
    BatchGradient,
    advantage_stats,
    batch_gradients,
    estimator_configs,
    estimator_view,
    gradient_parameters,
    gradient_summary,
    replay_advantages,
    replay_problem,
)


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


def saved_run_config(run_dir: Path) -> dict:
    """The resolved config of a run from its `.hydra/config.yaml` (for a run without recordings, which carry it)."""
    from omegaconf import OmegaConf

    from calmrl.errors import ConfigError

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

    from calmrl.algos import ALGOS
    from calmrl.errors import ConfigError
    from calmrl.recording import load_batch
    from calmrl.rollout.mismatch import mismatch_metrics
    from calmrl.schemas.shaper import shapes_rewards

    started = time.perf_counter()
    console = Console(stderr=True)
    run_dir = Path(cfg.run).expanduser()
    fresh_batches, reference_rollouts = int(cfg.fresh_batches), int(cfg.reference_rollouts)
    files = select_recordings(run_dir, cfg.get("batches"), required=not fresh_batches)
    # the batch fields the estimators can read: a freshly built batch has no reference and no critic values
    fields = {"input_ids", "old_logprobs"}
    if files:  # a recording carries the run's config
        first, first_meta, _ = load_batch(next(iter(files.values())))
        run_cfg = first_meta["config"]
        if not fresh_batches:
            fields = {k for k, v in vars(first).items() if v is not None}
    else:
        run_cfg = saved_run_config(run_dir)
    if (fresh_batches or reference_rollouts) and shapes_rewards(OmegaConf.create(run_cfg["shaper"])):
        raise ConfigError(
            f"fresh_batches and reference_rollouts sample new episodes, and replay does not rebuild the run's "
            f"shaper={run_cfg['shaper']['name']}; replay its recorded batches with reference_rollouts=0"
        )
    names = list(dict.fromkeys(str(n) for n in cfg.estimators))
    reference = str(cfg.reference)
    computed = list(dict.fromkeys([*names, reference]))
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
    if any(ALGOS.get(n).needs_ref for n in computed) and "ref_logprobs" not in fields:
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
                    stats[n].append(advantage_stats(views[n]))  # on the returns it saw
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
    header = {
        "run": str(run_dir),
        "source": f"{fresh_batches} fresh batches (seed {seed}) at the replay weights" if fresh_batches else "recorded",
        "weights": weights,
        "weights_short": short,
        "reference": reference,
        "reference_description": described,
        "max_is_weight": cfg.get("max_is_weight"),
        "params": cfg.get("params"),
        "num_params": sum(p.numel() for p in params),
        "algo_configs": {n: OmegaConf.to_container(configs[n], resolve=True) for n in computed},
        "seconds": time.perf_counter() - started,
    }
    report = build_report(header, names, stats, summary, diagnostics)
    paths = write_outputs(report, out_dir)
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
