"""The schedule every training loop runs: the RL trainer (in one process or over Ray), the preference loop and
the multi-agent recipes differ in what an iteration, an evaluation and a checkpoint are, not in when they happen.

    messages; "resuming ... from iteration k" when resuming
    the initial evaluation (once per run: it is kept in the checkpointed trainer state)
    for it in k+1 .. trainer.total_iters:
        metrics = loop.train_iteration(it)
        evaluate  every trainer.eval_every iterations and at the end
        checkpoint every trainer.checkpoint_every iterations and at the end
        log the metrics (perf/iter_s, perf/eval_s, perf/checkpoint_s added)
    the summary, from the last evaluation (or the checkpoint's, when the run was already complete)

A loop gives: `cfg`, `run_dir`, `resume_from`, `start_iter`, `state` (set up by `calmrl.runs.start_run` and its
resume), and the methods of `Loop`. Evaluations are JSON-able dicts: they go into the trainer state.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from omegaconf import OmegaConf

from calmrl.logging import MetricsLogger


class Loop(Protocol):
    cfg: Any
    run_dir: Any
    resume_from: Any
    start_iter: int
    state: dict

    def startup_messages(self) -> list[str]: ...  # printed first (data, caches, baselines)

    def train_iteration(self, it: int) -> dict[str, float]: ...

    def evaluation(self) -> dict: ...  # held-out evaluation, JSON-able

    def describe_initial(self, evaluation: dict) -> str | None: ...  # the line printed after the initial one

    def eval_metrics(self, evaluation: dict) -> dict[str, float]: ...  # its `eval/...` metrics

    def save_checkpoint(self, it: int) -> None: ...

    def summarize(self, initial: dict, final: dict) -> tuple[dict, str]: ...  # (the run's summary, its message)


def run_schedule(loop: Loop) -> dict:
    """Run `loop` from its start (or resume) iteration to `trainer.total_iters`; returns its summary."""
    cfg = loop.cfg
    total, every = cfg.trainer.total_iters, cfg.trainer
    resume_step = loop.resume_from.step if loop.resume_from is not None else None
    full_config = OmegaConf.to_container(cfg, resolve=True)
    logger = MetricsLogger(cfg.logger, loop.run_dir, total, loop.start_iter, resume_step, full_config)
    try:
        for message in loop.startup_messages():
            logger.message(message)
        if loop.resume_from is not None:
            logger.message(f"resuming {loop.run_dir} from iteration {loop.start_iter} ({loop.resume_from.path.name})")
        if "initial_eval" not in loop.state:
            loop.state["initial_eval"] = loop.evaluation()
            described = loop.describe_initial(loop.state["initial_eval"])
            if described:
                logger.message(described)
        last_eval = None
        for it in range(loop.start_iter + 1, total + 1):
            t_start = time.perf_counter()
            metrics = loop.train_iteration(it)
            if metrics.get("loss/skipped_steps"):
                logger.message(
                    f"[yellow]iteration {it}: skipped {int(metrics['loss/skipped_steps'])} optimizer step(s) with a "
                    "non-finite loss or gradient norm"
                )
            if it == total or (every.eval_every and it % every.eval_every == 0):
                t_eval = time.perf_counter()
                last_eval = loop.evaluation()
                metrics.update(loop.eval_metrics(last_eval))
                metrics["perf/eval_s"] = time.perf_counter() - t_eval
            if it == total or it % every.checkpoint_every == 0:
                t_ckpt = time.perf_counter()
                if last_eval is not None:
                    loop.state["last_eval"] = last_eval
                loop.save_checkpoint(it)
                metrics["perf/checkpoint_s"] = time.perf_counter() - t_ckpt
            metrics["perf/iter_s"] = time.perf_counter() - t_start
            logger.log(it, metrics)
        final = last_eval if last_eval is not None else loop.state.get("last_eval", {})
        summary, message = loop.summarize(loop.state["initial_eval"], final)
        logger.message(message)
        return summary
    finally:
        logger.close()


def rate_text(rate: float | None) -> str:
    """A success rate for a summary line; None when the run was already complete and nothing was evaluated."""
    return f"{rate:.3f}" if rate is not None else "n/a (run already complete)"
