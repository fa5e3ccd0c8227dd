"""rollout=vllm without vLLM: the conversion of vLLM's outputs to Generations, the engine arguments, the prompt
tokenization and the config checks. The objects below are small fakes shaped like vLLM's `RequestOutput` /
`CompletionOutput` / `Logprob` (the fields calmrl reads); the engine itself is tested in tests/gpu."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hydra import compose, initialize_config_dir

from calmrl.cli import CONFIG_DIR
from calmrl.config import validate
from calmrl.errors import ConfigError
from calmrl.rollout.vllm import VLLMGenerator, engine_kwargs, sampled_logprobs, to_generations


@dataclass
class FakeLogprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class FakeCompletion:  # vllm.outputs.CompletionOutput
    token_ids: list[int]
    logprobs: list[dict[int, FakeLogprob]] | None
    text: str = ""
    index: int = 0


@dataclass
class FakeRequestOutput:  # vllm.outputs.RequestOutput
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion] = field(default_factory=list)


def completion(tokens, lps, extra=None):
    """logprobs=0 gives one entry per position (the sampled token); logprobs=k adds the top k."""
    rows = []
    for t, lp in zip(tokens, lps, strict=True):
        row = {t: FakeLogprob(lp, rank=2)}
        if extra:
            row[extra] = FakeLogprob(-0.01, rank=1)  # a top-1 token that was not sampled
        rows.append(row)
    return FakeCompletion(token_ids=list(tokens), logprobs=rows)


def decode(ids):
    return " ".join(f"t{i}" for i in ids)


def test_to_generations_keeps_order_ids_logprobs_and_eos():
    outs = [
        FakeRequestOutput([1, 2, 3], [completion([7, 8, 0], [-0.5, -1.25, -0.1])]),  # 0 = EOS, kept
        FakeRequestOutput([4, 5], [completion([9], [-2.0])]),  # cut by max_tokens: no EOS
    ]
    gens = to_generations(outs, [[1, 2, 3], [4, 5]], decode)
    assert [g.prompt_ids for g in gens] == [[1, 2, 3], [4, 5]]
    assert [g.response_ids for g in gens] == [[7, 8, 0], [9]]
    assert gens[0].logprobs == [-0.5, -1.25, -0.1]
    assert gens[1].logprobs == [-2.0]
    assert gens[0].text == "t7 t8 t0"
    assert all(len(g.logprobs) == len(g.response_ids) for g in gens)


def test_sampled_logprob_is_picked_among_top_k_entries():
    # with logprobs=k a position also lists the top tokens; the sampled token's entry is the one recorded
    c = completion([5, 6], [-3.0, -4.0], extra=99)
    assert sampled_logprobs(c.logprobs, c.token_ids) == [-3.0, -4.0]


def test_missing_or_mismatched_logprobs_raise():
    with pytest.raises(ValueError, match="logprobs=0"):
        sampled_logprobs(None, [1])
    with pytest.raises(ValueError, match="2 log-prob positions for 1 tokens"):
        sampled_logprobs([{1: FakeLogprob(-1.0)}, {2: FakeLogprob(-1.0)}], [1])
    with pytest.raises(ValueError, match="do not include the sampled token 3"):
        sampled_logprobs([{4: FakeLogprob(-1.0)}], [3])


def test_output_of_another_prompt_is_rejected():
    outs = [FakeRequestOutput([1, 2], [completion([3], [-1.0])])]
    with pytest.raises(ValueError, match="belongs to another prompt"):
        to_generations(outs, [[1, 9]], decode)
    with pytest.raises(ValueError, match="1 outputs for 2 prompts"):
        to_generations(outs, [[1, 2], [3]], decode)


def make(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["run_name=t", *overrides])


def test_engine_kwargs_ask_for_processed_logprobs_and_the_configured_engine():
    cfg = make("rollout=vllm", "rollout.gpu_memory_utilization=0.3", "rollout.max_num_seqs=64", "policy.dtype=bfloat16")
    kw = engine_kwargs(cfg.rollout, cfg.policy, "/models/p", seed=3)
    assert kw["logprobs_mode"] == "processed_logprobs"  # log softmax(logits / T), as HFGenerator records
    assert kw["generation_config"] == "vllm"
    assert (kw["model"], kw["tokenizer"], kw["dtype"], kw["seed"]) == ("/models/p", "/models/p", "bfloat16", 3)
    assert kw["gpu_memory_utilization"] == 0.3 and kw["max_num_seqs"] == 64
    from calmrl.config import vllm_build

    # the CPU build refuses sleep mode, so it is dropped there
    assert kw["enable_prefix_caching"] is True and kw["enable_sleep_mode"] is (vllm_build() != "cpu")
    assert "max_model_len" not in kw  # null: the model's own length


def test_rollout_vllm_composes_and_fails_early_for_each_vllm_build(monkeypatch):
    """What validation says with no vLLM, with the CUDA build, and with the CPU build (head sizes)."""
    import calmrl.config as config

    cfg = make("rollout=vllm")
    assert cfg.rollout.name == "vllm" and cfg.rollout.max_new_tokens == cfg.policy.max_new_tokens
    monkeypatch.setattr(config, "vllm_build", lambda: None)
    with pytest.raises(ConfigError, match=r"rollout=vllm needs vLLM: on a CUDA GPU `pip install calmrl\[vllm\]`"):
        validate(cfg)
    monkeypatch.setattr(config, "vllm_build", lambda: "cuda")
    with pytest.raises(ConfigError, match="CUDA build; it cannot run with device=cpu"):
        validate(make("rollout=vllm", "device=cpu"))
    monkeypatch.setattr(config, "vllm_build", lambda: "cpu")
    with pytest.raises(ConfigError, match=r"takes head sizes \[32, 64.*this policy's is 16"):
        validate(cfg)  # policy=tiny: 64 / 4 heads
    validate(make("rollout=vllm", "device=cpu", "policy.num_heads=2", "policy.num_kv_heads=2"))  # head size 32


def test_rollout_correction_ranges():
    for override, message in [
        ("rollout.correction=is", r"rollout.correction=is is not one of \['none', 'tis', 'mask'\]"),
        ("rollout.correction_cap=0.5", "rollout.correction_cap must be >= 1"),
        ("rollout.correction_high=0.9", "0 <= low < 1 < high"),
        ("rollout.mismatch_every=-1", "rollout.mismatch_every must be >= 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(make(override))


@pytest.mark.parametrize(
    "override, message",
    [
        ("rollout.gpu_memory_utilization=0", "rollout.gpu_memory_utilization must be in (0, 1]"),
        ("rollout.sleep_level=3", "rollout.sleep_level must be in [1, 2]"),
        ("rollout.tensor_parallel_size=0", "rollout.tensor_parallel_size must be >= 1"),
    ],
)
def test_rollout_vllm_ranges(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        validate(make("rollout=vllm", override))


class RecordingEngine:
    """Stands in for VLLMEngine to see what the generator sends it: token ids per call."""

    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, temperature, max_new_tokens):
        self.calls.append((list(prompt_ids), temperature, max_new_tokens))
        return [None] * len(prompt_ids)


def test_generator_sends_the_same_prompt_ids_as_hf_generator(tiny_policy):
    """The template's text is tokenized exactly as HFGenerator tokenizes it (no special tokens, no padding)."""
    from calmrl.rollout import HFGenerator

    model, tok = tiny_policy
    prompts = ["goal north . move:", "task: reach the goal\ngoal 2 east 1 south . wall north .\naction:", "a"]
    hf = HFGenerator(model, tok, max_new_tokens=2, temperature=1.0)(prompts)
    engine = RecordingEngine()
    gen = VLLMGenerator(engine, tok, max_new_tokens=5, temperature=0.7, batch_size=2)
    assert len(gen(prompts)) == 3
    sent = [ids for call in engine.calls for ids in call[0]]
    assert sent == [g.prompt_ids for g in hf]
    assert [len(c[0]) for c in engine.calls] == [2, 1]  # batch_size prompts per engine call
    assert all(c[1:] == (0.7, 5) for c in engine.calls)
