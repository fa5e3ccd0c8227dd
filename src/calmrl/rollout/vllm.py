"""rollout=vllm: batched generation on an in-process vLLM engine, with the sampling log-prob of every token.

One `VLLMEngine` holds the `vllm.LLM`; `VLLMGenerator`s over it are `GenerateFn`s (prompts -> Generations), one
per temperature, so the trainer's sampling and greedy-eval generators share one engine and one KV cache.
Nothing here needs the trainer: a Ray actor can hold a `VLLMEngine` and call the same methods.

Conventions, chosen to match `HFGenerator` exactly, so the learner's importance ratios start at 1:
- Prompts go in as token ids made by the policy's own (HF) tokenizer, `add_special_tokens=False`, never as
  text: vLLM's tokenization of a chat template could differ by a token and the ratio would be off.
- Log-probs are of the *sampling* distribution, log softmax(raw logits / T). vLLM's default
  (`logprobs_mode="raw_logprobs"`) returns log softmax(raw logits), before temperature, so we start the engine
  with `logprobs_mode="processed_logprobs"`: after penalties (none here) and temperature, and after
  top-k/top-p, which we leave off. At temperature 0 (greedy) both are log softmax(raw logits), as in HF.
- A response ends at and includes its EOS token (`stop_token_ids=[eos]`); the text is decoded by the HF
  tokenizer with `skip_special_tokens=True`. The model's generation_config.json is ignored
  (`generation_config="vllm"`), as HFGenerator overrides its top-k / top-p too.

Weights: `load_weights(named_tensors)` runs the worker's `reload_weights` (vLLM's supported in-place reload for
RL: it takes Hugging Face checkpoint names, fuses q/k/v and gate/up, and redoes the kernel-format processing,
e.g. the CPU build's packed GEMM weights) through `LLM.collective_rpc`, then clears the prefix cache, whose KV
entries were computed with the old weights. vLLM only logs a warning for weights it did not load, so every sync
is verified: the engine scores a fixed probe sequence (prompt log-probs) and they must equal the sender's own
log-probs of it (`probe_logprobs`) within `rollout.sync_check_tol`; otherwise, or when the reload raises or
does not finish within `rollout.sync_timeout_s`, `WeightSyncError` ends the run (a failed in-place reload can
leave the engine's parameters half-replaced, so it is never retried; `resume=auto` continues from the last
checkpoint). The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, set before vLLM loads
unless the user set it), so the tensors are passed by reference, without a copy through pickling.

Sleep mode (colocated with the learner on one GPU): `sleep()` before the update offloads the weights to CPU
(level 1) or drops them (level 2) and frees the KV cache; `load_weights` wakes the weights first, loads, then
wakes the KV cache, so the peak is one set of weights plus the learner's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from calmrl.config import vllm_build
from calmrl.rollout.episodes import Generation


# ---------------------------------------------------------------- conversion (no vLLM needed)
def sampled_logprobs(per_position: Sequence[Any] | None, token_ids: Sequence[int]) -> list[float]:
    """The log-prob of each sampled token, from vLLM's per-position logprobs (`CompletionOutput.logprobs`).

    Each position holds a mapping token id -> Logprob (a dict, or a row of vLLM's FlatLogprobs); with
    `SamplingParams(logprobs=0)` it holds the sampled token only, with logprobs=k the top k as well.
    """
    if per_position is None:
        raise ValueError("vLLM returned no log-probs; the request needs SamplingParams(logprobs=0)")
    if len(per_position) != len(token_ids):
        raise ValueError(f"vLLM returned {len(per_position)} log-prob positions for {len(token_ids)} tokens")
    out = []
    for pos, (entry, token) in enumerate(zip(per_position, token_ids, strict=True)):
        lp = entry.get(token) if hasattr(entry, "get") else None
        if lp is None:
            raise ValueError(f"vLLM's log-probs at position {pos} do not include the sampled token {token}")
        out.append(float(getattr(lp, "logprob", lp)))
    return out


def to_generations(
    outputs: Sequence[Any], prompt_ids: Sequence[Sequence[int]], decode: Callable[[list[int]], str]
) -> list[Generation]:
    """vLLM `RequestOutput`s (one per prompt, one completion each, in prompt order) -> Generations."""
    if len(outputs) != len(prompt_ids):
        raise ValueError(f"vLLM returned {len(outputs)} outputs for {len(prompt_ids)} prompts")
    gens = []
    for i, (out, ids) in enumerate(zip(outputs, prompt_ids, strict=True)):
        # LLM.generate returns outputs in request order; a mismatch would silently pair the wrong prompt
        if out.prompt_token_ids is not None and list(out.prompt_token_ids) != list(ids):
            raise ValueError(f"vLLM output {i} belongs to another prompt (its prompt token ids differ)")
        completion = out.outputs[0]
        response = list(completion.token_ids)
        gens.append(
            Generation(
                prompt_ids=list(ids),
                response_ids=response,
                logprobs=sampled_logprobs(completion.logprobs, response),
                text=decode(response),
            )
        )
    return gens


def engine_kwargs(rollout_cfg, policy_cfg, model_path: str | Path, seed: int) -> dict[str, Any]:
    """Arguments of `vllm.LLM` for a rollout=vllm config and a policy (a save_pretrained directory)."""
    kwargs: dict[str, Any] = {
        "model": str(model_path),
        "tokenizer": str(model_path),
        "dtype": str(policy_cfg.dtype),
        "trust_remote_code": bool(policy_cfg.trust_remote_code),
        "seed": int(seed),
        "gpu_memory_utilization": float(rollout_cfg.gpu_memory_utilization),
        "enable_prefix_caching": bool(rollout_cfg.enable_prefix_caching),
        # the CPU build has no sleep mode (its ModelConfig refuses it); on CPU there is no GPU memory to free anyway
        "enable_sleep_mode": bool(rollout_cfg.enable_sleep_mode) and vllm_build() != "cpu",
        "tensor_parallel_size": int(rollout_cfg.tensor_parallel_size),
        "enforce_eager": bool(rollout_cfg.enforce_eager),
        "logprobs_mode": "processed_logprobs",  # log softmax(logits / T): the HFGenerator convention
        "generation_config": "vllm",  # ignore the model's sampling defaults (top_k, top_p, penalties)
    }
    if rollout_cfg.max_model_len is not None:
        kwargs["max_model_len"] = int(rollout_cfg.max_model_len)
    if rollout_cfg.max_num_seqs is not None:
        kwargs["max_num_seqs"] = int(rollout_cfg.max_num_seqs)
    return kwargs


def _reload_weights_on_worker(worker, weights: list) -> None:
    """Runs on each vLLM worker (via collective_rpc): vLLM's in-place reload from Hugging Face checkpoint names."""
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)


class WeightSyncError(RuntimeError):
    """A weight sync into the engine failed, timed out, or left weights that do not score like the sender's."""


PROBE_LEN = 32  # tokens of the fixed sequence every sync is checked on


def probe_ids(vocab_size: int, length: int = PROBE_LEN) -> list[int]:
    """The fixed token sequence a weight sync is verified on: the same in every process that syncs."""
    import torch

    return torch.randint(0, int(vocab_size), (int(length),), generator=torch.Generator().manual_seed(0)).tolist()


def probe_logprobs(model, ids: Sequence[int]):
    """A Hugging Face model's log-prob of each probe token after the first: [len(ids) - 1] float32 on CPU."""
    import torch

    from calmrl.learners.torch import token_logprobs

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    with torch.no_grad():
        lp = token_logprobs(model, x, torch.ones_like(x))[0, 1:].float().cpu()
    model.train(was_training)
    return lp


def sync_check_tol(rollout_cfg, policy_cfg) -> float:
    """rollout.sync_check_tol, or by the policy's dtype: float32 kernels agree to ~1e-6, 16-bit ones to ~1e-2."""
    if rollout_cfg.get("sync_check_tol") is not None:
        return float(rollout_cfg.sync_check_tol)
    return 1e-3 if str(policy_cfg.dtype) == "float32" else 5e-2


# ---------------------------------------------------------------- the engine
class VLLMEngine:
    """One in-process `vllm.LLM`; generation from token ids, weight loading, sleep/wake."""

    def __init__(
        self,
        llm_kwargs: dict[str, Any],
        tokenizer,
        sleep_level: int = 1,
        seed_per_request: bool = False,
        sync_check_tol: float = 1e-3,
        sync_timeout_s: float = 300.0,
    ):
        # In-process engine core: collective_rpc then passes the weight tensors by reference (no pickling).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.in_process = os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        from vllm import LLM

        self.llm = LLM(**llm_kwargs)
        self.tokenizer = tokenizer
        self.sleep_enabled = bool(llm_kwargs.get("enable_sleep_mode", False))
        self.sleep_level = int(sleep_level)
        self.seed_per_request = bool(seed_per_request)
        self.asleep = False
        self.sync_check_tol = float(sync_check_tol)
        self.sync_timeout_s = float(sync_timeout_s)
        self.probe = probe_ids(len(tokenizer))
        import numpy as np

        self._seeds = np.random.default_rng(int(llm_kwargs.get("seed", 0)))

    @classmethod
    def from_config(cls, rollout_cfg, policy_cfg, model_path: str | Path, tokenizer, seed: int) -> VLLMEngine:
        return cls(
            engine_kwargs(rollout_cfg, policy_cfg, model_path, seed),
            tokenizer,
            sleep_level=rollout_cfg.sleep_level,
            seed_per_request=rollout_cfg.seed_per_request,
            sync_check_tol=sync_check_tol(rollout_cfg, policy_cfg),
            sync_timeout_s=rollout_cfg.sync_timeout_s,
        )

    def generate(
        self, prompt_ids: Sequence[Sequence[int]], temperature: float, max_new_tokens: int
    ) -> list[Generation]:
        """One completion per prompt (token ids), with the log-prob of each sampled token."""
        from vllm import SamplingParams

        if not prompt_ids:
            return []
        if self.asleep:  # e.g. an evaluation between an update and the next sync: the weights are unchanged
            self.wake_up()
        common = {
            "n": 1,
            "temperature": float(temperature),
            "top_p": 1.0,
            "max_tokens": int(max_new_tokens),
            "logprobs": 0,  # the sampled token's log-prob only
            "stop_token_ids": [] if self.tokenizer.eos_token_id is None else [self.tokenizer.eos_token_id],
            "detokenize": False,  # decoded by the HF tokenizer, as HFGenerator does
        }
        if self.seed_per_request:
            seeds = self._seeds.integers(0, 2**31 - 1, size=len(prompt_ids)).tolist()
            params: Any = [SamplingParams(**common, seed=int(s)) for s in seeds]
        else:
            params = SamplingParams(**common)
        prompts = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return to_generations(outputs, prompt_ids, self._decode)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def probe_logprobs(self, ids: Sequence[int]):
        """The engine's log-prob of each token of `ids` after the first (prompt log-probs): [len(ids) - 1]."""
        import torch
        from vllm import SamplingParams

        if self.asleep:
            self.wake_up()
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([{"prompt_token_ids": list(ids)}], params, use_tqdm=False)[0]
        positions = out.prompt_logprobs
        if positions is None or len(positions) != len(ids):
            raise WeightSyncError("vLLM returned no prompt log-probs for the sync probe")
        return torch.tensor([float(positions[i][int(ids[i])].logprob) for i in range(1, len(ids))])

    def load_weights(self, named_tensors: Iterable[tuple[str, Any]], expected=None) -> float:
        """Load new weights (Hugging Face names, any dtype/device) into the engine through vLLM's `reload_weights`.

        expected: the sender's `probe_logprobs` of `self.probe` under these weights; when given, the engine's own
        must match within `sync_check_tol` (mean |diff|) or `WeightSyncError` is raised. Returns that mean |diff|.
        """
        weights = list(named_tensors)
        if not weights:
            raise WeightSyncError("a weight sync was given no tensors")
        if not self.in_process:  # a separate engine process: ship CPU copies
            weights = [(name, t.detach().cpu()) for name, t in weights]
        if self.asleep:
            self.llm.wake_up(tags=["weights"])  # weights first: the KV cache is not needed to load them
        self._call_with_timeout(
            lambda: self.llm.collective_rpc(
                _reload_weights_on_worker, timeout=None if self.in_process else self.sync_timeout_s, args=(weights,)
            ),
            "reloading the weights",
        )
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        if expected is None:
            return float("nan")
        gap = float((self.probe_logprobs(self.probe) - expected.float().cpu()).abs().mean())
        if not gap <= self.sync_check_tol:
            raise WeightSyncError(
                f"after the weight sync the engine's log-probs of the probe differ from the learner's by {gap:.3g} "
                f"(mean |diff| > rollout.sync_check_tol={self.sync_check_tol}): some weights did not load (names or "
                "shapes that do not match the served model?); vLLM's warnings above name them"
            )
        return gap

    def _call_with_timeout(self, fn: Callable[[], Any], what: str):
        """fn() in a helper thread, so that an engine that hangs ends the run with an error instead of stalling."""
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-sync")
        future = pool.submit(fn)
        try:
            return future.result(timeout=self.sync_timeout_s)
        except concurrent.futures.TimeoutError:
            raise WeightSyncError(
                f"vLLM did not finish {what} within rollout.sync_timeout_s={self.sync_timeout_s}s"
            ) from None
        except WeightSyncError:
            raise
        except Exception as exc:  # vLLM's loaders assert on shapes; the engine may now hold half-replaced weights
            raise WeightSyncError(f"vLLM failed {what}: {type(exc).__name__}: {exc}") from exc
        finally:
            pool.shutdown(wait=False)

    def sync_from(self, model) -> float:
        """Load a (Hugging Face) torch module's current weights, e.g. the learner's policy after an update, and
        verify them on the probe against the module's own log-probs; returns the probe's mean |diff|."""
        return self.load_weights(model.state_dict().items(), expected=probe_logprobs(model, self.probe))

    def sleep(self) -> None:
        """Free vLLM's GPU memory (only with rollout.enable_sleep_mode); `load_weights` or `wake_up` undoes it."""
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=self.sleep_level)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


class VLLMGenerator:
    """GenerateFn over a `VLLMEngine` at one temperature (0 = greedy); tokenizes prompts like HFGenerator."""

    def __init__(self, engine: VLLMEngine, tokenizer, max_new_tokens: int, temperature: float, batch_size: int = 1024):
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_new_tokens = int(max_new_tokens)  # read per call: the budgeted rollout (algo=brpo) changes it
        self.temperature = float(temperature)
        self.batch_size = int(batch_size)

    def __call__(self, prompts: list[str]) -> list[Generation]:
        ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        out: list[Generation] = []
        for start in range(0, len(ids), self.batch_size):
            out.extend(
                self.engine.generate(ids[start : start + self.batch_size], self.temperature, self.max_new_tokens)
            )
        return out
