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
from calmrl.algos.dpo import treg_prompts, treg_token_rewards
from calmrl.errors import ConfigError
from calmrl.learners.torch import pack, response_logprobs

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
@dataclass
class TokenizedPairs:
    prompt: list[list[int]]
    chosen: list[list[int]]  # response tokens, EOS last
    rejected: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt)


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
@dataclass
class ReferenceCache:
    """Per pair: reference sequence log-probs of both responses; for T-REG, r_hat_t of every response token."""

    chosen: torch.Tensor  # [P] log pi_ref(y_w | x)
    rejected: torch.Tensor  # [P] log pi_ref(y_l | x)
    chosen_rewards: list[torch.Tensor] | None = None  # P tensors [len(y_w)] of r_hat_t
    rejected_rewards: list[torch.Tensor] | None = None


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


def compute_reference(
    ref_model, tokenizer, pairs: list[PreferencePair], data: TokenizedPairs, algo_cfg, batch_size: int
) -> ReferenceCache:
    """log pi_ref(y|x) of every response; with `better_template` in the config also T-REG's r_hat_t (the reference
    scoring each response after the contrastive "improve" and "worsen" prompts)."""
    pad = tokenizer.pad_token_id
    chosen = response_logprobs(ref_model, data.prompt, data.chosen, pad, batch_size)
    rejected = response_logprobs(ref_model, data.prompt, data.rejected, pad, batch_size)
    cache = ReferenceCache(torch.stack([c.sum() for c in chosen]), torch.stack([r.sum() for r in rejected]))
    if algo_cfg.get("better_template") is None:
        return cache
    better, worse = [], []
    for p in pairs:
        better.append(templated_prompt_ids(tokenizer, algo_cfg.better_template, p.prompt, algo_cfg.max_prompt_length))
        worse.append(templated_prompt_ids(tokenizer, algo_cfg.worse_template, p.prompt, algo_cfg.max_prompt_length))
    for name, responses in (("chosen", data.chosen), ("rejected", data.rejected)):
        lb = response_logprobs(ref_model, better, responses, pad, batch_size)
        lw = response_logprobs(ref_model, worse, responses, pad, batch_size)
        rewards = [treg_token_rewards(b, w, torch.ones_like(b)) for b, w in zip(lb, lw, strict=True)]
        setattr(cache, f"{name}_rewards", rewards)
    return cache


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
    checkpoints, resume=auto, logger and learner; `calmrl.loops.build_trainer` picks it for algo=dpo / dpo_treg."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        from calmrl.learners.build import build_local_learner
        from calmrl.learners.checkpoint import restore_rng
        from calmrl.policy import load_policy
        from calmrl.runs import start_run

        start_run(self, cfg, run_dir)  # the RL loop's device, checkpoints, resume rules and seeding

        algo = ALGOS.get(cfg.algo.name)
        self.pair_loss, self.needs_token_rewards = algo.pair_loss, algo.needs_token_rewards
        train, held = load_preference_data(cfg.data)
        if held is None:
            train, held = split_pairs(train, float(cfg.algo.eval_fraction))
        self.train_pairs, self.held_pairs = train, held

        base_path = self._policy_path(train + held)
        load_path = self.resume_from.policy_dir if self.resume_from else base_path
        self.model, self.tokenizer = load_policy(load_path, cfg.policy.dtype, cfg.policy.trust_remote_code, self.device)
        tok_args = (self.tokenizer, int(cfg.algo.max_length), int(cfg.algo.max_prompt_length))
        self.train_data = tokenize_pairs(train, *tok_args)
        self.held_data = tokenize_pairs(held, *tok_args)

        self.messages: list[str] = []
        all_pairs = train + held
        all_data = TokenizedPairs(
            *(a + b for a, b in zip(vars(self.train_data).values(), vars(self.held_data).values(), strict=True))
        )
        templates = {k: cfg.algo[k] for k in ("better_template", "worse_template") if k in cfg.algo}
        key = cache_key(all_data, base_path, {"templates": templates, "dtype": str(cfg.policy.dtype)})

        def compute() -> ReferenceCache:
            ref, _ = load_policy(base_path, cfg.policy.dtype, cfg.policy.trust_remote_code, self.device)
            ref.eval().requires_grad_(False)
            cache = compute_reference(
                ref, self.tokenizer, all_pairs, all_data, cfg.algo, int(cfg.learner.micro_batch_size)
            )
            del ref
            return cache

        t0 = time.perf_counter()
        ref, cached = load_or_compute_reference(self.run_dir / CACHE_FILE, key, compute, self.messages.append)
        self.messages.append(
            f"reference log-probs of {len(all_pairs)} pairs: "
            + ("read from the cache" if cached else f"computed in {time.perf_counter() - t0:.1f}s and cached")
            + f" ({self.run_dir / CACHE_FILE})"
        )
        n = len(train)
        self.ref_train = _slice_cache(ref, 0, n)
        self.ref_held = _slice_cache(ref, n, len(all_pairs))

        self.learner, self.checkpoints = build_local_learner(cfg, self.model, self.resume_from, self.checkpoints)
        self.start_iter = 0
        self.state: dict = {}
        if self.resume_from is not None:
            opt_state = self.resume_from.optimizer_state()
            if opt_state is not None:
                self.learner.load_optimizer_state(opt_state)
            restore_rng(self.resume_from.rng_state)
            self.start_iter = self.resume_from.step
            self.state = dict(self.resume_from.trainer_state)

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

    # ---------------------------------------------------------------- loss on a set of pairs
    def _rows(self, data: TokenizedPairs, ref: ReferenceCache, idx: list[int]):
        """2P rows (chosen, then rejected) of pairs `idx`: tensors on the device, ref sequence log-probs and the
        T-REG token rewards placed on the response tokens."""
        prompts = [data.prompt[i] for i in idx] * 2
        responses = [data.chosen[i] for i in idx] + [data.rejected[i] for i in idx]
        ids, attn, mask = pack(prompts, responses, self.tokenizer.pad_token_id)
        ref_seq = torch.cat([ref.chosen[idx], ref.rejected[idx]])
        rewards = torch.zeros_like(mask)
        if self.needs_token_rewards:
            rows = [ref.chosen_rewards[i] for i in idx] + [ref.rejected_rewards[i] for i in idx]
            for r, row in enumerate(rows):
                rewards[r, mask[r].bool()] = row
        dev = self.device
        return ids.to(dev), attn.to(dev), mask.to(dev), ref_seq.to(dev), rewards.to(dev)

    def _pair_losses(self, data, ref, idx: list[int]) -> dict[str, torch.Tensor]:
        from calmrl.learners.torch import token_logprobs

        ids, attn, mask, ref_seq, rewards = self._rows(data, ref, idx)
        logp = token_logprobs(self.learner.train_module, ids, attn)
        return self.pair_loss(logp, mask, ref_seq, rewards, self.cfg.algo)

    def _micro(self, idx: list[int]) -> list[list[int]]:
        per = max(1, int(self.cfg.learner.micro_batch_size) // 2)  # a pair is two rows
        return [idx[s : s + per] for s in range(0, len(idx), per)]

    def train_iteration(self, it: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        idx = pair_order(cfg.seed, it, int(cfg.algo.minibatch_size), len(self.train_pairs))
        total = len(idx)

        def micro_losses():
            for chunk in self._micro(idx):
                out = self._pair_losses(self.train_data, self.ref_train, chunk)
                yield out["loss"].sum() / total, _pair_metrics(out, total, prefix="")

        step = self.learner.step_on_losses(micro_losses())
        metrics = {"loss/skipped_steps": 0.0 if step is not None else 1.0, **(step or {})}
        metrics["loss/optimizer_steps"] = 1.0 if step is not None else 0.0
        metrics["perf/update_s"] = time.perf_counter() - t0
        metrics["perf/pairs"] = float(total)
        return metrics

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Implicit reward margin, accuracy and DPO loss on the held-out pairs (`eval/...`)."""
        n = len(self.held_pairs)
        if n == 0:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        for chunk in self._micro(list(range(n))):
            for k, v in _pair_metrics(self._pair_losses(self.held_data, self.ref_held, chunk), n, "eval/").items():
                sums[k] = sums.get(k, 0.0) + v
        self.model.train()
        return sums

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
        self.checkpoints.save(it, self.model, self.tokenizer, self.learner.optimizer_state(), trainer_state=self.state)

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


def _slice_cache(cache: ReferenceCache, start: int, stop: int) -> ReferenceCache:
    return ReferenceCache(
        cache.chosen[start:stop],
        cache.rejected[start:stop],
        cache.chosen_rewards[start:stop] if cache.chosen_rewards is not None else None,
        cache.rejected_rewards[start:stop] if cache.rejected_rewards is not None else None,
    )


def _pair_metrics(out: dict[str, torch.Tensor], total: int, prefix: str) -> dict[str, float]:
    """Sums over this chunk's pairs divided by `total`, so chunks add up to means over all pairs.

    Training names: loss/dpo, reward/margin, reward/accuracy, reward/chosen, reward/rejected (+ loss/treg_reg,
    loss/treg_weight for T-REG); evaluation: the same under eval/ (eval/loss_dpo, eval/reward_margin, ...)."""
    chosen, rejected = out["chosen_reward"].detach(), out["rejected_reward"].detach()
    loss_ns = f"{prefix}loss_" if prefix else "loss/"
    reward_ns = f"{prefix}reward_" if prefix else "reward/"
    values = {
        f"{loss_ns}dpo": out["dpo"].detach(),
        f"{reward_ns}margin": chosen - rejected,
        f"{reward_ns}accuracy": (chosen > rejected).float(),
        f"{reward_ns}chosen": chosen,
        f"{reward_ns}rejected": rejected,
    }
    if "reg" in out:
        values[f"{loss_ns}treg_reg"] = out["reg"].detach()
        values[f"{loss_ns}treg_weight"] = out["weight"]
    return {k: float(v.sum()) / total for k, v in values.items()}
