"""Load a policy (model + tokenizer) from a local `save_pretrained` directory.

The tiny default and a real checkpoint (e.g. Qwen2.5-1.5B-Instruct) go through this one function.
Weights load from safetensors only; remote code runs only when the user opts in.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PolicyLoadError(RuntimeError):
    pass


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a save_pretrained policy directory, padding on the left for batched generation (EOS as
    the pad token where it has none). A role that holds no torch copy of the policy (a vLLM worker, the driver
    under cluster=ray) loads only this."""
    from transformers import AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise PolicyLoadError(f"{path} is not a save_pretrained model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise PolicyLoadError(
            f"{path} holds no *.safetensors weights; calmrl loads safetensors only (re-save with save_pretrained)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False, device: str = "cpu"):
    """Returns (model, tokenizer); the tokenizer pads on the left for batched generation."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        Path(path).expanduser(), dtype=DTYPES[str(dtype)], trust_remote_code=trust_remote_code, use_safetensors=True
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer
