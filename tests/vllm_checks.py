"""What the vLLM engine tests on CPU (tests/integration/test_vllm_cpu.py) and on a GPU (tests/gpu/test_vllm_rollout.py)
share: the prompts, a tiny policy of a head size vLLM takes, the engine settings, and the comparisons with a Hugging
Face forward pass of the same weights. Imported by those tests with tests/ on sys.path (pytest's rootdir conftest)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

TEMPERATURE = 0.7  # not 1: a log-prob taken before the temperature would differ from HF's by far more than ATOL
PROMPTS = [
    "task: reach the goal\ngoal 2 north 1 west . wall south .\naction:",
    "task: reach the goal\ngoal east .\naction:",
    "goal 1 south .",
    "task: reach the goal\ngoal 2 north 1 west . wall south .\naction:",  # a repeat: served from the prefix cache
]


def tiny_vllm_policy(out_dir, policy: dict):
    """A tiny gridworld policy saved with save_pretrained; `policy` sets its sizes (head size = hidden / heads)."""
    from calmrl.envs.gridworld import GridWorld
    from calmrl.policy import PromptTemplate, build_tiny_policy

    words = GridWorld.vocabulary(5) + PromptTemplate.vocabulary()
    return build_tiny_policy(out_dir, words, OmegaConf.create({**policy, "init_seed": 0}))


def engine_settings(max_model_len: int):
    """(rollout, policy) config nodes for `engine_kwargs`: float32, eager, prefix cache and sleep mode on (the CPU
    build drops sleep mode in engine_kwargs: it has none)."""
    rollout = {
        "gpu_memory_utilization": 0.3,
        "enable_prefix_caching": True,
        "enable_sleep_mode": True,
        "sleep_level": 1,
        "tensor_parallel_size": 1,
        "max_model_len": max_model_len,
        "max_num_seqs": None,
        "enforce_eager": True,
        "seed_per_request": False,
    }
    return OmegaConf.create(rollout), OmegaConf.create({"dtype": "float32", "trust_remote_code": False})


@torch.no_grad()
def hf_logprobs(model, gen, temperature):
    """Teacher-forced log-probs [R] of `gen`'s response tokens under `model`, at the sampler's temperature."""
    device = next(model.parameters()).device
    ids = torch.tensor([gen.prompt_ids + gen.response_ids], device=device)
    logits = model(ids).logits[0, len(gen.prompt_ids) - 1 : -1].float()
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(-1, ids[0, len(gen.prompt_ids) :, None]).squeeze(-1).cpu()


def assert_match_hf(model, gens, temperature, atol):
    assert any(len(g.response_ids) > 1 for g in gens), "every response is empty: nothing was compared"
    for g in gens:
        assert len(g.logprobs) == len(g.response_ids)
        ref = hf_logprobs(model, g, temperature)
        got = torch.tensor(g.logprobs)
        assert torch.allclose(got, ref, atol=atol), f"max |vllm - hf| = {(got - ref).abs().max():.4g}"


@torch.no_grad()
def assert_greedy_is_argmax(model, gens):
    device = next(model.parameters()).device
    for g in gens:  # each greedy token is the argmax of HF's logits (a random model has no ties)
        ids = torch.tensor([g.prompt_ids + g.response_ids], device=device)
        assert model(ids).logits[0, len(g.prompt_ids) - 1 : -1].argmax(-1).cpu().tolist() == g.response_ids


def perturb(model, seed: int) -> None:
    """Move every weight by 5% of its tensor's mean magnitude: enough to change the samples' log-probs."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, device=device) * 0.05 * p.abs().mean().clamp(min=1e-3))
