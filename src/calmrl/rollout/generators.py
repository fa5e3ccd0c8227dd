"""The rollout role's generators, wherever it is hosted (the trainer's process or a Ray rollout worker)."""

from __future__ import annotations

from pathlib import Path

from calmrl.rollout.hf import HFGenerator


def build_generators(rollout_cfg, policy_cfg, tokenizer, model=None, model_path: str | Path | None = None, seed=0):
    """(engine, sample, greedy): the generators at `rollout.temperature` (training episodes) and at
    `rollout.eval_temperature` (evaluation). rollout=vllm: one vLLM engine, loaded from `model_path` and seeded
    with `seed`, behind both (its weights are synced after every update); rollout=hf: both generate with the torch
    module `model` itself (engine None: it never needs a sync)."""
    r = rollout_cfg
    temperatures = (r.temperature, r.eval_temperature)
    if r.name == "vllm":
        from calmrl.rollout.vllm import VLLMEngine, VLLMGenerator

        engine = VLLMEngine.from_config(r, policy_cfg, model_path, tokenizer, seed=seed)
        sample, greedy = (
            VLLMGenerator(engine, tokenizer, r.max_new_tokens, t, r.generation_batch_size) for t in temperatures
        )
        return engine, sample, greedy
    sample, greedy = (HFGenerator(model, tokenizer, r.max_new_tokens, t, r.generation_batch_size) for t in temperatures)
    return None, sample, greedy
