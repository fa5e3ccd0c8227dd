"""Offline preference training (algo=dpo, algo=dpo_treg): the data, the reference cache and the loop.

    pairs            = load_preference_data(data)              # prompt / chosen / rejected
    train, held_out  = the data set's test split, or a seeded `algo.eval_fraction` of the pairs
    reference        = log pi_ref(y|x) of every response (and T-REG's r_hat_t), computed ONCE with the initial
                       policy and cached in <run>/reference_cache.safetensors
    for it in 1..total_iters:
        loss on algo.minibatch_size pairs -> one optimizer step of the run's learner
        every eval_every: implicit reward margin / accuracy on the held-out pairs
        every checkpoint_every: the same atomic checkpoints as the RL loop (resume=auto continues)

The pairs of iteration `it` are a pure function of (seed, it) — epoch e visits the training pairs in the
permutation drawn from rng(seed, e) — so a resumed run sees exactly the pairs it would have seen.

Data formats (`data=`): a JSONL file (one {"prompt", "chosen", "rejected"} object per line), a parquet file, or a
Hugging Face `datasets` layout: a directory written by `save_to_disk` (a Dataset or a DatasetDict) or a directory
of parquet / jsonl files (split names from the file names, as on the Hub). A chosen/rejected value that is a list of
chat messages contributes the content of its last message. A `test` (or `validation`) split is the held-out set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from calmrl.algos import ALGOS
from calmrl.algos.dpo import treg_prompts
from calmrl.errors import ConfigError
from calmrl.learners.pairs import PairData, ReferenceCache, TokenizedPairs, score_reference

HELD_OUT_SPLITS = ("test", "validation", "eval")
CACHE_FILE = "reference_cache.safetensors"


# ---------------------------------------------------------------- data
@dataclass
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def _text(value) -> str:
    """A column value as text: a string, or a chat message list (its last message's content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and "content" in value[-1]:
        return str(value[-1]["content"])
    raise ConfigError(f"expected a string or a list of chat messages, got {type(value).__name__}: {value!r:.80}")


def _pairs(rows, source: str) -> list[PreferencePair]:
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in row]
        if missing:
            raise ConfigError(
                f"{source}: row {i} has no {', '.join(missing)} (each pair needs prompt, chosen, rejected)"
            )
        out.append(PreferencePair(_text(row["prompt"]), _text(row["chosen"]), _text(row["rejected"])))
    if not out:
        raise ConfigError(f"{source}: no preference pairs")
    return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{n} is not valid JSON ({exc.msg})") from None
    return rows


def load_preference_data(path: str | Path) -> tuple[list[PreferencePair], list[PreferencePair] | None]:
    """(training pairs, held-out pairs or None when the data names no held-out split). See the module docstring."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix in (".jsonl", ".json"):  # no `datasets` needed for the plain format
        return _pairs(_read_jsonl(path), str(path)), None
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"data={path}: reading parquet files and `datasets` directories needs the datasets package "
            "(pip install 'calmrl[data]'); a JSONL file needs nothing"
        ) from None
    datasets.disable_progress_bars()
    if path.is_file() and path.suffix == ".parquet":
        loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir():
        loaded = datasets.load_dataset(str(path))  # parquet / jsonl files; splits from their names
    else:
        raise ConfigError(f"data={path}: give a .jsonl or .parquet file or a `datasets` directory")
    if isinstance(loaded, datasets.DatasetDict):
        held = next((s for s in HELD_OUT_SPLITS if s in loaded), None)
        train = "train" if "train" in loaded else next(s for s in loaded if s != held)
        return (
            _pairs(loaded[train], f"{path} [{train}]"),
            _pairs(loaded[held], f"{path} [{held}]") if held else None,
        )
    return _pairs(loaded, str(path)), None


def split_pairs(pairs: list, fraction: float, seed: int = 0) -> tuple[list, list]:
    """(train, held_out): a seeded `fraction` of the pairs held out (at least one when fraction > 0)."""
    if fraction <= 0:
        return list(pairs), []
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_held = max(1, round(fraction * len(pairs)))
    if n_held >= len(pairs):
        raise ConfigError(f"algo.eval_fraction={fraction} leaves no training pairs out of {len(pairs)}")
    held = {int(i) for i in order[:n_held]}
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


# ---------------------------------------------------------------- tokens
def tokenize_pairs(pairs: list[PreferencePair], tokenizer, max_length: int, max_prompt_length: int) -> TokenizedPairs:
    """Prompt and responses tokenized apart (so both responses of a pair share the exact prompt tokens); each
    response ends with EOS; the prompt keeps its last `max_prompt_length` tokens and a response is cut at the end
    so that prompt + response fits `max_length`."""

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    out = TokenizedPairs([], [], [])
    for p in pairs:
        prompt = ids(p.prompt)[-max_prompt_length:]
        room = max_length - len(prompt)
        out.prompt.append(prompt)
        out.chosen.append((ids(p.chosen) + [tokenizer.eos_token_id])[:room])
        out.rejected.append((ids(p.rejected) + [tokenizer.eos_token_id])[:room])
    return out


# ---------------------------------------------------------------- the reference cache
def _flatten(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.cat(rows) if rows else torch.zeros(0)), torch.tensor([len(r) for r in rows], dtype=torch.long)


def _unflatten(flat: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.split(flat, lengths.tolist()))


def cache_key(data: TokenizedPairs, ref_path: Path, extra: dict) -> str:
    """Fingerprint of what the cached numbers depend on: the token ids, the reference weights, the T-REG prompts."""
    h = hashlib.sha256()
    h.update(json.dumps([data.prompt, data.chosen, data.rejected]).encode())
    for f in sorted(Path(ref_path).glob("*.safetensors")) + [Path(ref_path) / "config.json"]:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def load_or_compute_reference(path: Path, key: str, compute, message=print) -> tuple[ReferenceCache, bool]:
    """The cache at `path` if its key matches, else `compute()` written atomically (temp file, rename).
    Returns (cache, whether it was read from disk)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open has no __iter__)
                    rewards = "chosen_rewards" in t
                    return ReferenceCache(
                        t["chosen"],
                        t["rejected"],
                        _unflatten(t["chosen_rewards"], t["chosen_lengths"]) if rewards else None,
                        _unflatten(t["rejected_rewards"], t["rejected_lengths"]) if rewards else None,
                    ), True
            message(f"reference cache {path} is for other data or another reference model; recomputing")
        except Exception as exc:  # a torn or foreign file is recomputed, never trusted
            message(f"reference cache {path} is unreadable ({exc}); recomputing")
    cache = compute()
    tensors = {"chosen": cache.chosen.contiguous(), "rejected": cache.rejected.contiguous()}
    if cache.chosen_rewards is not None:
        tensors["chosen_rewards"], tensors["chosen_lengths"] = _flatten(cache.chosen_rewards)
        tensors["rejected_rewards"], tensors["rejected_lengths"] = _flatten(cache.rejected_rewards)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={"key": key})
    os.replace(tmp, path)
    return cache, False


def templated_prompt_ids(tokenizer, template: str, prompt: str, max_length: int) -> list[int]:
    """Token ids of `template` with `prompt` in its `{prompt}` slot, at most `max_length` of them.

    When it is too long, the prompt is cut (keeping its end, as every prompt is) and the template's own text is
    kept whole: cutting the joined text from the left would drop T-REG's instruction first, and a prompt at the
    limit would then be scored identically after "improve" and "worsen" (every r_hat_t exactly 0).
    """
    ids = tokenizer(treg_prompts(prompt, template, template)[0], add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return ids
    before, _, after = template.partition("{prompt}")
    head = tokenizer(before, add_special_tokens=False)["input_ids"] if before else []
    tail = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    room = max(max_length - len(head) - len(tail), 0)
    body = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return (head + (body[-room:] if room else []) + tail)[-max_length:]


def contrast_prompt_ids(tokenizer, pairs: list[PreferencePair], algo_cfg) -> tuple[list, list] | None:
    """T-REG's "improve" and "worsen" prompts (`algo.better_template` / `worse_template`) of every pair, as token
    ids within `algo.max_prompt_length`; None for a method without them (plain DPO)."""
    if algo_cfg.get("better_template") is None:
        return None
    limit = int(algo_cfg.max_prompt_length)
    return (
        [templated_prompt_ids(tokenizer, algo_cfg.better_template, p.prompt, limit) for p in pairs],
        [templated_prompt_ids(tokenizer, algo_cfg.worse_template, p.prompt, limit) for p in pairs],
    )


def compute_reference(
    ref_model, tokenizer, pairs: list[PreferencePair], data: TokenizedPairs, algo_cfg, batch_size: int
) -> ReferenceCache:
    """log pi_ref(y|x) of every response; with `better_template` in the config also T-REG's r_hat_t (the reference
    scoring each response after the contrastive "improve" and "worsen" prompts), in this process."""
    contrast = contrast_prompt_ids(tokenizer, pairs, algo_cfg)
    return score_reference(ref_model, tokenizer.pad_token_id, data, contrast, batch_size)


# ---------------------------------------------------------------- the loop
def pair_order(seed: int, it: int, batch: int, n: int) -> list[int]:
    """Training-pair indices of iteration `it` (1-based): positions [(it-1)*batch, it*batch) of the stream that
    visits the pairs epoch after epoch, epoch e in the permutation drawn from rng(seed, e)."""
    out, perms = [], {}
    for pos in range((it - 1) * batch, it * batch):
        epoch, i = divmod(pos, n)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(int(perms[epoch][i]))
    return out


class PreferenceTrainer:
    """The offline counterpart of `calmrl.trainer.Trainer` for preference algos: same run directory layout,
    checkpoints, resume=auto, logger and learner; `calmrl.loops.build_trainer` picks it for algo=dpo / dpo_treg.

    The pair losses run in the policy role (`calmrl.learners.pairs.PairRole`): here in this process; under
    cluster=ray on the DeepSpeed ranks (`calmrl.cluster.trainer.RayPreferenceTrainer`, which overrides the three
    role hooks: `load_policy_copy`, `build_pair_role`, `reference_cache`)."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        from calmrl.learners.checkpoint import restore_rng
        from calmrl.runs import start_run

        start_run(self, cfg, run_dir)  # the RL loop's device, checkpoints, resume rules and seeding

        self.method = ALGOS.get(cfg.algo.name)
        train, held = load_preference_data(cfg.data)
        if held is None:
            train, held = split_pairs(train, float(cfg.algo.eval_fraction))
        self.train_pairs, self.held_pairs = train, held
        all_pairs = train + held

        base_path = self._policy_path(all_pairs)
        load_path = self.resume_from.policy_dir if self.resume_from else base_path
        self.model, self.tokenizer = self.load_policy_copy(load_path)
        self.policy_weights = self.model  # what the checkpoint's policy/ is written from (save_pretrained)
        tok_args = (self.tokenizer, int(cfg.algo.max_length), int(cfg.algo.max_prompt_length))
        train_data, held_data = tokenize_pairs(train, *tok_args), tokenize_pairs(held, *tok_args)
        all_data = train_data + held_data
        self.learner, self.pairs = self.build_pair_role(base_path)

        self.messages: list[str] = []
        templates = {k: cfg.algo[k] for k in ("better_template", "worse_template") if k in cfg.algo}
        key = cache_key(all_data, base_path, {"templates": templates, "dtype": str(cfg.policy.dtype)})
        contrast = contrast_prompt_ids(self.tokenizer, all_pairs, cfg.algo)
        t0 = time.perf_counter()
        ref, cached = load_or_compute_reference(
            self.run_dir / CACHE_FILE,
            key,
            lambda: self.reference_cache(base_path, all_data, contrast),
            self.messages.append,
        )
        self.messages.append(
            f"reference log-probs of {len(all_pairs)} pairs: "
            + ("read from the cache" if cached else f"computed in {time.perf_counter() - t0:.1f}s and cached")
            + f" ({self.run_dir / CACHE_FILE})"
        )
        n = len(train)
        self.pairs.load(PairData(train_data, held_data, ref.rows(0, n), ref.rows(n, len(all_pairs))))

        self.start_iter = 0
        self.state: dict = {}
        if self.resume_from is not None:
            opt_state = self.resume_from.optimizer_state()
            if opt_state is not None:
                self.learner.load_optimizer_state(opt_state)
            restore_rng(self.resume_from.rng_state)
            self.start_iter = self.resume_from.step
            self.state = dict(self.resume_from.trainer_state)

    # ---------------------------------------------------------------- setup helpers: the roles this process hosts
    def load_policy_copy(self, path: Path):
        """(the policy module this process trains, its tokenizer)."""
        from calmrl.policy import load_policy

        return load_policy(path, self.cfg.policy.dtype, self.cfg.policy.trust_remote_code, self.device)

    def build_pair_role(self, base_path: Path):
        """(learner, PairRole): the policy role in this process, learner=torch or learner=deepspeed as one rank."""
        from calmrl.learners.build import build_local_learner
        from calmrl.learners.pairs import PairRole

        cfg = self.cfg
        learner, self.checkpoints = build_local_learner(cfg, self.model, self.resume_from, self.checkpoints)
        role = PairRole(
            learner,
            self.method.pair_loss,
            self.method.needs_token_rewards,
            cfg.algo,
            self.tokenizer.pad_token_id,
            cfg.learner.micro_batch_size,
        )
        return learner, role

    def reference_cache(self, base_path: Path, data: TokenizedPairs, contrast) -> ReferenceCache:
        """The reference's scores of every pair (see `score_reference`), from the initial policy loaded here."""
        from calmrl.policy import load_policy

        cfg = self.cfg
        ref, _ = load_policy(base_path, cfg.policy.dtype, cfg.policy.trust_remote_code, self.device)
        ref.eval().requires_grad_(False)
        return score_reference(ref, self.tokenizer.pad_token_id, data, contrast, int(cfg.learner.micro_batch_size))

    def _policy_path(self, pairs: list[PreferencePair]) -> Path:
        """policy.path, or the tiny policy with a tokenizer built from the data set's own words."""
        from calmrl.policy import build_tiny_policy

        if self.cfg.policy.path:
            return Path(self.cfg.policy.path).expanduser()
        words = {w for p in pairs for text in (p.prompt, p.chosen, p.rejected) for w in text.split()}
        for k in ("better_template", "worse_template"):
            if k in self.cfg.algo:
                words |= set(self.cfg.algo[k].replace("{prompt}", " ").split())
        return build_tiny_policy(self.run_dir / "tiny_policy", sorted(words), self.cfg.policy)

    # ---------------------------------------------------------------- the loop
    def train_iteration(self, it: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        idx = pair_order(cfg.seed, it, int(cfg.algo.minibatch_size), len(self.train_pairs))
        step = self.pairs.train_step(idx)
        metrics = {"loss/skipped_steps": 0.0 if step is not None else 1.0, **(step or {})}
        metrics["loss/optimizer_steps"] = 1.0 if step is not None else 0.0
        metrics["perf/update_s"] = time.perf_counter() - t0
        metrics["perf/pairs"] = float(len(idx))
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Implicit reward margin, accuracy and DPO loss on the held-out pairs (`eval/...`)."""
        return self.pairs.evaluate()

    # ---------------------------------------------------------------- the schedule's hooks (calmrl.schedule)
    def run(self) -> dict:
        from calmrl.schedule import run_schedule

        return run_schedule(self)

    def startup_messages(self) -> list[str]:
        return [
            *self.messages,
            f"{self.cfg.algo.name}: {len(self.train_pairs)} training pairs, {len(self.held_pairs)} held out; "
            f"{self.cfg.algo.minibatch_size} pairs per step",
        ]

    def evaluation(self) -> dict:
        return self.evaluate()

    def describe_initial(self, evaluation: dict) -> None:
        return None  # the summary reports the held-out margin before and after

    def eval_metrics(self, evaluation: dict) -> dict[str, float]:
        return evaluation  # already `eval/...`

    def save_checkpoint(self, it: int) -> None:
        self.checkpoints.save(
            it, self.policy_weights, self.tokenizer, self.learner.optimizer_state(), trainer_state=self.state
        )

    def summarize(self, initial: dict, final: dict) -> tuple[dict, str]:
        summary = {
            "initial_reward_margin": initial.get("eval/reward_margin"),
            "final_reward_margin": final.get("eval/reward_margin"),
            "initial_reward_accuracy": initial.get("eval/reward_accuracy"),
            "final_reward_accuracy": final.get("eval/reward_accuracy"),
            "final_success_rate": None,  # no environment: `calmrl train` returns this to sweepers
            "iterations": self.cfg.trainer.total_iters,
            "metrics_file": str(self.run_dir / "metrics.jsonl"),
            "checkpoint_dir": str(self.checkpoints.directory),
        }
        message = f"metrics: {summary['metrics_file']}\ncheckpoints: {summary['checkpoint_dir']}"
        if self.held_pairs and final:
            message = (
                f"\n[bold]held-out implicit reward on {len(self.held_pairs)} pairs: margin "
                f"{summary['initial_reward_margin']:+.4f} -> {summary['final_reward_margin']:+.4f}, accuracy "
                f"{summary['initial_reward_accuracy']:.3f} -> {summary['final_reward_accuracy']:.3f}[/bold]\n" + message
            )
        return summary, message
