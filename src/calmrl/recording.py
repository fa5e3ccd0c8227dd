"""Rollout recording (`trainer.record_rollouts=N`): every N-th iteration's batch, as the credit-assignment
estimators receive it, kept in the run directory so estimators can later be compared on identical batches.

One file per recorded iteration, `<run dir>/rollouts/iter_<it:08d>.safetensors`, written to a temporary name and
renamed (a killed run never leaves a half-written file under the final name). Its tensors are every tensor field of
`calmrl.data.Batch` after the shaper and before the method's own folding and penalty rule (so any estimator can
apply its own): token ids, attention and response masks, sampling log-probs, step rewards, the group, trajectory,
step and anchor keys, the invalid flags and penalties, a shaper's dense step and token rewards. Next to them, what
the run computed on the batch: the run's algo's `advantages` (and `returns`), `ref_logprobs` and `values` where the
method needed them, and `learner_logprobs` (the learner's own log-probs before the update) in the iterations that
computed them (`rollout.mismatch_every`, or a `rollout.correction`). The header's metadata holds, as JSON under the
key `calmrl`: the format version, the iteration, the policy version (the number of updates behind the sampling
weights), the resolved run config and the anchor texts.

Resuming: the iterations after the checkpoint are sampled again exactly (seeds are a function of (seed, iteration)),
so their recordings from the killed run are removed and written again. `trainer.record_budget_mb` caps the
directory's size: once the next file would pass it, recording stops with a warning and training goes on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path

import torch

from calmrl.data import Batch

log = logging.getLogger(__name__)

FORMAT = 1
DIRNAME = "rollouts"
_NAME = re.compile(r"^iter_(\d{8})\.safetensors$")
_BATCH_FIELDS = {f.name for f in dataclasses.fields(Batch)}


def save_batch(path: Path, batch: Batch, meta: dict, extra: dict[str, torch.Tensor] | None = None) -> int:
    """Write `batch` (every tensor field that is set), the `extra` tensors and `meta` to `path` atomically; returns
    the file's size in bytes."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in vars(batch).items() if isinstance(v, torch.Tensor)}
    for name, value in (extra or {}).items():
        if name in _BATCH_FIELDS:
            raise ValueError(f"extra tensor {name!r} would shadow the batch field of that name")
        tensors[name] = value.detach().cpu().contiguous()
    header = {"format": FORMAT, **meta, "anchor_text": list(batch.anchor_text)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata={"calmrl": json.dumps(header)})
    os.replace(tmp, path)
    return path.stat().st_size


def load_batch(path: str | Path) -> tuple[Batch, dict, dict[str, torch.Tensor]]:
    """(the recorded batch, its metadata, the extra tensors such as `learner_logprobs`) of a file `save_batch`
    wrote."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if "calmrl" not in metadata:
            raise ValueError(f"{path} is not a calmrl rollout recording (no 'calmrl' metadata in its header)")
        meta = json.loads(metadata["calmrl"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has recording format {meta.get('format')}; this calmrl reads format {FORMAT}")
    anchor_text = meta.pop("anchor_text")
    batch = Batch(**{k: v for k, v in tensors.items() if k in _BATCH_FIELDS}, anchor_text=anchor_text)
    extra = {k: v for k, v in tensors.items() if k not in _BATCH_FIELDS}
    return batch, meta, extra


def recorded_iterations(run_dir: str | Path) -> dict[int, Path]:
    """iteration -> recording file, for every recording under `run_dir` (ascending)."""
    directory = Path(run_dir) / DIRNAME
    found = {}
    for path in directory.glob("iter_*.safetensors") if directory.is_dir() else []:
        match = _NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


class RolloutRecorder:
    """Writes every `every`-th iteration's batch under `<run_dir>/rollouts` until `budget_mb` is used up."""

    def __init__(self, run_dir: Path, every: int, budget_mb: float, start_iter: int = 0):
        self.every, self.budget = int(every), float(budget_mb) * 2**20
        self.directory = Path(run_dir) / DIRNAME
        self.full = False
        self.used = 0
        if self.every <= 0:
            return
        for it, path in recorded_iterations(run_dir).items():
            if it > start_iter:  # a killed run's, after its last checkpoint: this run samples them again
                path.unlink()
            else:
                self.used += path.stat().st_size
        for tmp in self.directory.glob(".iter_*.tmp-*") if self.directory.is_dir() else []:
            tmp.unlink()

    def due(self, it: int) -> bool:
        return self.every > 0 and it % self.every == 0 and not self.full

    def record(self, it: int, batch: Batch, meta: dict, extra: dict[str, torch.Tensor] | None = None) -> int:
        """Write iteration `it`'s recording; returns its size in bytes (0 when it would pass the budget, which also
        ends the recording)."""
        path = self.directory / f"iter_{it:08d}.safetensors"
        size = save_batch(path, batch, meta, extra)
        if self.used + size > self.budget:
            path.unlink()
            self.full = True
            log.warning(
                "trainer.record_budget_mb=%g reached (%.1f MB recorded): iteration %d and later are not recorded; "
                "raise the budget to keep more",
                self.budget / 2**20,
                self.used / 2**20,
                it,
            )
            return 0
        self.used += size
        return size
