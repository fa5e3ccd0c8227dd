"""Atomic, verifiable training checkpoints that survive SIGKILL at any moment.

Layout of one checkpoint, `<directory>/step_00000010/`:

    policy/                  HF `save_pretrained` dir (safetensors weights, config, tokenizer if given)
    optimizer.pt             optimizer state dict (only if one was given)
    rng.json, rng.safetensors  python/numpy RNG states (JSON) and torch CPU/CUDA states (tensors)
    trainer_state.json       the plain JSON dict given to `save`
    extra_<name>.safetensors one tensor dict per `extra` entry (e.g. a critic)
    <name>/                  one directory per `extra_dirs` entry (e.g. `deepspeed/`: a learner's sharded state)
    manifest.json            {"step": int, "files": {relative_path: sha256}, "format": 1}, written LAST

Guarantees:
- A checkpoint is built in a sibling temp dir `.step_00000010.tmp-<pid>`; every file is fsynced, the
  manifest written and fsynced, then the dir is renamed into place and the parent fsynced. A kill at
  any point leaves either the complete new checkpoint or none at all; `step` counts finished
  iterations, so resuming from the newest valid checkpoint loses no finished iteration.
- `load` re-hashes every file against the manifest; `latest` skips (with a warning) any checkpoint
  that is half-written, truncated or bit-flipped and falls back to the previous one.
- Loading never unpickles arbitrary objects: tensors come from safetensors, plain state from JSON,
  and the optimizer state from `torch.load(..., weights_only=True)`.
- After each save the newest `keep_last` valid checkpoints remain: the one just written always stays,
  then the newest other valid ones; invalid ones and stale temp dirs are deleted.
- One writer per directory is assumed (rank 0 of a distributed run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

FORMAT = 1
_FINAL = re.compile(r"^step_(\d+)$")
_ASIDE = re.compile(r"^\.step_(\d+)\.old-\d+$")  # a complete checkpoint moved aside while re-saving its step
_STALE = re.compile(r"^\.step_\d+\.(tmp|old)-\d+$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message is a one-line reason."""


def capture_rng() -> dict:
    """Snapshot the python, numpy-global, torch CPU and (if available) CUDA RNG states.

    Returns {"python": dict, "numpy": dict, "torch": uint8 tensor, "cuda": [uint8 tensor, ...]};
    the first two are JSON-able, the rest are tensors ("cuda" only present when CUDA is available).
    """
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss},
        "numpy": {
            "kind": kind,
            "keys": keys.tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Restore RNG states produced by `capture_rng` (e.g. `Checkpoint.rng_state`)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["kind"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        # A resume may see a different GPU count; restore the devices both runs have.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


@dataclass
class Checkpoint:
    """A validated checkpoint. Call `restore_rng(ckpt.rng_state)` to resume the random streams."""

    step: int
    path: Path
    policy_dir: Path
    trainer_state: dict
    rng_state: dict = field(default_factory=dict, repr=False)

    def optimizer_state(self, map_location="cpu") -> dict | None:
        """The saved optimizer state dict, or None if none was saved."""
        f = self.path / "optimizer.pt"
        if not f.exists():
            return None
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:  # weights_only refused an object: never execute it
            # torch's message is paragraphs: its first suggests weights_only=False (exactly what we refuse);
            # the one naming the blocked global is the reason
            paragraphs = [" ".join(p.split()) for p in str(e).split("\n\n") if p.strip()]
            reason = next((p for p in paragraphs if "GLOBAL" in p or "global" in p), paragraphs[-1])
            raise CheckpointError(
                f"{f}: refusing to load: it holds more than tensors and plain containers ({reason})"
            ) from e

    def extra_state_dict(self, name: str) -> dict[str, torch.Tensor] | None:
        """The tensors saved under `extra[name]`, or None if there were none."""
        f = self.path / f"extra_{name}.safetensors"
        return load_file(f, device="cpu") if f.exists() else None


def _sha256(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())  # flushes the inode's dirty pages, whoever wrote them
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves, lists, validates and prunes the checkpoints under one directory."""

    def __init__(self, directory: str | Path, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last
        self._verified: set[Path] = set()  # hashed by this process already; saves re-hashing on prune

    def save(
        self,
        step: int,
        model,
        tokenizer=None,
        optimizer_state: dict | None = None,
        trainer_state: dict | None = None,
        extra: dict[str, dict[str, torch.Tensor]] | None = None,
        extra_dirs: dict[str, Path] | None = None,
    ) -> Path:
        """Atomically write checkpoint `step` (replacing an existing one), prune old ones, return its path.
        Each `extra_dirs` directory (written by someone else, e.g. DeepSpeed's own sharded checkpoint) is moved
        into the checkpoint under its name and hashed with the rest, so it is as atomic and verified as they are."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        for name in [*(extra or {}), *(extra_dirs or {})]:
            if not _NAME.match(name) or name in ("policy", "manifest.json"):
                raise ValueError(f"extra name {name!r} must match {_NAME.pattern}")
        # Serialise first so a non-JSON-able state fails before anything touches the disk.
        state_json = json.dumps(trainer_state or {}, indent=2, sort_keys=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step_{step:08d}"
        tmp = self.directory / f".step_{step:08d}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an earlier process that had our pid
        tmp.mkdir()

        # transformers 5 always writes safetensors (there is no pickle path left to opt out of).
        model.save_pretrained(tmp / "policy")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / "policy")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        rng = capture_rng()
        (tmp / "rng.json").write_text(json.dumps({"python": rng["python"], "numpy": rng["numpy"]}))
        tensors = {"torch": rng["torch"], **{f"cuda_{i}": s for i, s in enumerate(rng.get("cuda", []))}}
        save_file(tensors, tmp / "rng.safetensors")
        (tmp / "trainer_state.json").write_text(state_json)
        for name, sd in (extra or {}).items():
            # clone: safetensors refuses tensors that share storage (tied weights, views).
            save_file(
                {k: v.detach().cpu().clone().contiguous() for k, v in sd.items()},
                tmp / f"extra_{name}.safetensors",
            )
        for name, src in (extra_dirs or {}).items():
            shutil.move(str(src), str(tmp / name))  # a rename when on the same filesystem

        files = {}
        for root, _, names in sorted(os.walk(tmp)):
            for n in sorted(names):
                p = Path(root) / n
                files[p.relative_to(tmp).as_posix()] = _sha256(p, fsync=True)
            _fsync_dir(Path(root))
        with open(tmp / "manifest.json", "w") as f:
            json.dump({"step": step, "files": files, "format": FORMAT}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)

        if final.exists():
            # No atomic dir swap in POSIX: move the old one aside (list() recovers it if we die
            # between the two renames), put the new one in place, then drop the old.
            aside = self.directory / f".step_{step:08d}.old-{os.getpid()}"
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        self._verified.add(final)

        for p in self.directory.iterdir():
            if _STALE.match(p.name):
                shutil.rmtree(p, ignore_errors=True)
        self._prune(final)
        return final

    def _prune(self, keep: Path) -> None:
        others = sorted(
            (p for p in self.directory.iterdir() if _FINAL.match(p.name) and p != keep),
            key=lambda p: int(_FINAL.match(p.name).group(1)),
            reverse=True,
        )
        kept = 1
        for p in others:
            if kept < self.keep_last and self._is_valid(p):
                kept += 1
                continue
            # Manifest first: a kill mid-rmtree must leave something that no longer looks complete.
            (p / "manifest.json").unlink(missing_ok=True)
            shutil.rmtree(p, ignore_errors=True)
            self._verified.discard(p)

    def _is_valid(self, p: Path) -> bool:
        if p in self._verified:
            return True
        try:
            self.load(p)
            return True
        except CheckpointError:
            return False

    def list(self) -> list[Path]:
        """Complete-looking checkpoint dirs (manifest present, not yet verified), ascending by step."""
        if not self.directory.is_dir():
            return []
        found: dict[int, Path] = {}
        for p in sorted(self.directory.iterdir()):
            m = _ASIDE.match(p.name)
            if m and (p / "manifest.json").is_file():
                found.setdefault(int(m.group(1)), p)
        for p in self.directory.iterdir():
            m = _FINAL.match(p.name)
            if m and (p / "manifest.json").is_file():
                found[int(m.group(1))] = p  # the final name wins over a leftover aside copy
        return [found[s] for s in sorted(found)]

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that validates; invalid ones are skipped with a warning."""
        listed = self.list()
        if self.directory.is_dir():
            for p in sorted(self.directory.iterdir()):
                if _FINAL.match(p.name) and p not in listed:  # a delete cut short, or a copy made by hand
                    log.warning("skipping invalid checkpoint: %s: missing manifest.json", p)
        for p in reversed(listed):
            try:
                return self.load(p)
            except CheckpointError as e:
                log.warning("skipping invalid checkpoint: %s", e)  # e names the path and the reason
        return None

    def load(self, path: str | Path) -> Checkpoint:
        """Verify every file of the checkpoint at `path` against its manifest and load its plain state."""
        path = Path(path)

        def fail(reason: str) -> NoReturn:
            raise CheckpointError(f"{path}: {reason}")

        def read_json(rel: str):
            try:
                return json.loads((path / rel).read_text())
            except (OSError, UnicodeDecodeError, ValueError) as e:
                fail(f"unreadable {rel}: {type(e).__name__}: {' '.join(str(e).split())}")

        if not (path / "manifest.json").is_file():
            fail("missing manifest.json")
        man = read_json("manifest.json")
        if not (
            isinstance(man, dict)
            and man.get("format") == FORMAT
            and isinstance(man.get("step"), int)
            and isinstance(man.get("files"), dict)
        ):
            fail("malformed manifest.json")
        files: dict[str, str] = man["files"]
        for rel in ("rng.json", "rng.safetensors", "trainer_state.json"):
            if rel not in files:
                fail(f"manifest lists no {rel}")
        if not any(rel.startswith("policy/") for rel in files):
            fail("manifest lists no policy files")
        for rel, digest in files.items():
            f = path / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                fail(f"unsafe path in manifest: {rel}")
            if not f.is_file():
                fail(f"missing file {rel}")
            if _sha256(f) != digest:
                fail(f"checksum mismatch in {rel}")
        rng = read_json("rng.json")
        try:
            t = load_file(path / "rng.safetensors")
        except Exception as e:  # the checksum matched, so this is a writer bug, not corruption
            fail(f"unreadable rng.safetensors: {e}")
        rng["torch"] = t["torch"]
        cuda = sorted((int(k[5:]), v) for k, v in t.items() if k.startswith("cuda_"))
        if cuda:
            rng["cuda"] = [v for _, v in cuda]
        self._verified.add(path)
        return Checkpoint(
            step=man["step"],
            path=path,
            policy_dir=path / "policy",
            trainer_state=read_json("trainer_state.json"),
            rng_state=rng,
        )


class LearnerStateCheckpoints(CheckpointManager):
    """CheckpointManager whose checkpoints also hold a learner backend's own state under `deepspeed/`: DeepSpeed's
    optimizer (and ZeRO-3 weight) partitions, written by `save_state(directory)` into a staging directory that
    is moved in before the manifest, so `resume=auto` restores them as atomically as everything else."""

    STATE_DIR = "deepspeed"

    def __init__(self, directory, keep_last: int, save_state):
        super().__init__(directory, keep_last)
        self.save_state = save_state

    def save(self, step, model, tokenizer=None, optimizer_state=None, trainer_state=None, extra=None, extra_dirs=None):
        import shutil

        self.directory.mkdir(parents=True, exist_ok=True)
        staging = self.directory / f".{self.STATE_DIR}_staging-{step:08d}"
        shutil.rmtree(staging, ignore_errors=True)
        self.save_state(staging)  # under cluster=ray every rank writes its shard (a filesystem all ranks see)
        dirs = {**(extra_dirs or {}), self.STATE_DIR: staging}
        return super().save(step, model, tokenizer, optimizer_state, trainer_state, extra, extra_dirs=dirs)
