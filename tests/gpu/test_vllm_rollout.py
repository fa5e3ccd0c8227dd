"""rollout=vllm on a GPU: the engine's sampling log-probs equal a Hugging Face forward pass of the same policy
(log softmax(logits / T)), weights loaded through vLLM's reload_weights take effect (prefix cache included), sleep/wake
keeps the model, and `calmrl train rollout=vllm` runs. Skipped without CUDA or without the vllm extra.

The engine is built once per module (vLLM does not start a second engine in one process cleanly); the tests
run in file order and the weight-loading test, which changes the weights, comes last of the engine tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.gpu
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("rollout=vllm needs a CUDA GPU", allow_module_level=True)
pytest.importorskip("vllm", reason='needs the vllm extra: pip install "calmrl[vllm]"')

from vllm_checks import (  # noqa: E402
    PROMPTS,
    TEMPERATURE,
    assert_greedy_is_argmax,
    assert_match_hf,
    engine_settings,
    hf_logprobs,
    perturb,
    tiny_vllm_policy,
)

from calmrl.rollout.vllm import VLLMEngine, VLLMGenerator, engine_kwargs  # noqa: E402

ATOL = 1e-2  # float32 on both sides; different kernels (and TF32) leave ~1e-4..1e-3
# head_dim 64 (128 / 2 heads): a size every vLLM attention backend supports
POLICY = {"hidden_size": 128, "intermediate_size": 256, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1}


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return tiny_vllm_policy(tmp_path_factory.mktemp("tiny"), POLICY)


@pytest.fixture(scope="module")
def hf(policy_dir):
    from calmrl.policy import load_policy

    model, tok = load_policy(policy_dir, "float32", device="cuda")
    return model.eval(), tok


@pytest.fixture(scope="module")
def engine(policy_dir, hf):
    rollout, policy = engine_settings(max_model_len=1024)
    return VLLMEngine(engine_kwargs(rollout, policy, policy_dir, seed=0), hf[1], sleep_level=1)


def test_sampling_logprobs_match_hf_forward(engine, hf):
    model, tok = hf
    gen = VLLMGenerator(engine, tok, max_new_tokens=24, temperature=TEMPERATURE)
    gens = gen(PROMPTS)
    hf_ids = tok(PROMPTS, add_special_tokens=False)["input_ids"]
    assert [g.prompt_ids for g in gens] == hf_ids  # the template's tokens, as HF tokenizes them
    assert_match_hf(model, gens, TEMPERATURE, ATOL)
    for g in gens:
        if tok.eos_token_id in g.response_ids:  # a response ends at (and includes) its EOS, as in HFGenerator
            assert g.response_ids.index(tok.eos_token_id) == len(g.response_ids) - 1
        assert g.text == tok.decode(g.response_ids, skip_special_tokens=True)


def test_greedy_is_hf_greedy(engine, hf):
    model, tok = hf
    gens = VLLMGenerator(engine, tok, max_new_tokens=12, temperature=0.0)(PROMPTS[:2])
    assert_match_hf(model, gens, 0.0, ATOL)
    assert_greedy_is_argmax(model, gens)


def test_sleep_wake_round_trip_keeps_the_model(engine, hf):
    _, tok = hf
    greedy = VLLMGenerator(engine, tok, max_new_tokens=12, temperature=0.0)
    before = greedy(PROMPTS[:2])
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    assert engine.asleep
    free_asleep = torch.cuda.mem_get_info()[0]
    assert free_asleep > free_awake + 100 * 2**20, "sleep freed less than 100 MiB (the KV cache alone is more)"
    engine.wake_up()
    after = greedy(PROMPTS[:2])
    assert [g.response_ids for g in after] == [g.response_ids for g in before]
    for a, b in zip(after, before, strict=True):
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_load_weights_changes_outputs_to_match_hf_on_new_weights(engine, hf):
    model, tok = hf
    gen = VLLMGenerator(engine, tok, max_new_tokens=16, temperature=TEMPERATURE)
    old = gen(PROMPTS)  # fills the prefix cache with KV of the old weights
    perturb(model, 1)
    engine.sleep()  # as in training: asleep during the update, woken by the sync
    gap = engine.sync_from(model)  # through vLLM's reload_weights, verified on the probe
    assert gap <= engine.sync_check_tol and not engine.asleep
    new = gen(PROMPTS)
    assert_match_hf(model, new, TEMPERATURE, ATOL)  # also the repeated prompt: the stale prefix cache was dropped
    # the old samples' log-probs under the new weights differ from what the engine recorded for them
    shifts = [(hf_logprobs(model, o, TEMPERATURE) - torch.tensor(o.logprobs)).abs().max() for o in old if o.logprobs]
    assert max(shifts) > 10 * ATOL


def test_calmrl_train_rollout_vllm_smoke(tmp_path):
    """Two iterations of the CLI with the tiny policy on vLLM, colocated with the torch learner on one GPU."""
    args = [
        "train",
        "rollout=vllm",
        "run_name=vllm-smoke",
        "trainer.total_iters=2",
        "trainer.eval_every=0",
        "logger=jsonl",
        "device=cuda",
        "rollout.num_groups=4",
        "rollout.group_size=4",
        f"rollout.temperature={TEMPERATURE}",
        "rollout.gpu_memory_utilization=0.3",
        "rollout.enforce_eager=true",
        "rollout.max_model_len=1024",  # the tiny model's max_position_embeddings
        "env.eval_episodes=8",
        "env.max_steps=4",
        *[f"policy.{k}={v}" for k, v in POLICY.items()],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "calmrl", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "vllm-smoke" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "iter" in r]
    assert [r["iter"] for r in rows] == [1, 2]
    for r in rows:
        assert r["perf/weight_sync_s"] >= 0 and r["rollout/response_tokens"] > 0
        assert r["loss/skipped_steps"] == 0
        # sampling log-probs from vLLM = the learner's log-probs before its first step: the PPO ratio starts at 1
        assert r["loss/clip_frac"] < 0.05
    assert (tmp_path / "runs" / "vllm-smoke" / "checkpoints" / "step_00000002").is_dir()
