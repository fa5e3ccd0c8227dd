import json

import torch
from omegaconf import OmegaConf

from calmrl.policy import build_tiny_policy, load_policy
from calmrl.policy.loading import PolicyLoadError

CFG = OmegaConf.create(
    {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "init_seed": 3,
    }
)


def test_tiny_policy_round_trips_through_save_pretrained(tmp_path):
    path = build_tiny_policy(tmp_path / "p", ["north", "south", "goal", "."], CFG)
    assert (path / "config.json").is_file() and any(path.glob("*.safetensors"))
    model, tok = load_policy(path)
    assert model.config.model_type == "qwen2"
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.padding_side == "left" and tok.pad_token == "<|pad|>" and tok.eos_token == "<|endoftext|>"
    ids = tok("goal north . south", add_special_tokens=False)["input_ids"]
    assert len(ids) == 4  # every env word is one token, with or without its leading space
    assert tok.decode(ids) == "goal north . south"
    assert model.config.vocab_size == len(tok)


def test_same_spec_is_reused_and_init_seed_fixes_weights(tmp_path):
    a = build_tiny_policy(tmp_path / "a", ["x", "y"], CFG)
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_policy(tmp_path / "a", ["y", "x"], CFG) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime
    b = build_tiny_policy(tmp_path / "b", ["x", "y"], CFG)
    ma, _ = load_policy(a)
    mb, _ = load_policy(b)
    for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
        assert torch.equal(pa, pb)
    spec = json.loads((a / "calmrl_tiny_spec.json").read_text())
    assert spec["init_seed"] == 3


def test_load_errors_name_the_problem(tmp_path):
    import pytest

    with pytest.raises(PolicyLoadError, match="no config.json"):
        load_policy(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PolicyLoadError, match="no \\*.safetensors"):
        load_policy(tmp_path)
