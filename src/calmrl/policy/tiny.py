"""The tiny default policy: a small Qwen2-architecture model with random weights and a Qwen2 tokenizer
whose BPE merges are trained locally (with `tokenizers`) on the words the env and the prompt template
can emit, so each of those words is one token.

It is written with `save_pretrained` and then loaded by `load_policy`, exactly like a real checkpoint,
so the CPU default exercises the same code path as `policy.path=/models/Qwen2.5-1.5B-Instruct`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def build_tokenizer(words: list[str]):
    """A Qwen2 byte-level BPE tokenizer whose merges make every word of `words` a single token.

    The merges are learned with `tokenizers` on the words, with and without the leading space that the
    Qwen2 pre-tokenizer attaches; the result is a genuine `Qwen2Tokenizer`, the class transformers
    picks for a qwen2 model directory, so it survives save_pretrained / AutoTokenizer unchanged.
    The base alphabet is only the bytes the words use (not all 256): a random-init policy then puts far
    less probability on tokens no action can contain, and text outside the env's language is not
    representable, which a model that only ever reads its env's text never needs.
    """
    from tokenizers import Tokenizer, models, trainers
    from transformers import Qwen2Tokenizer

    pipeline = Qwen2Tokenizer(vocab={EOS_TOKEN: 0}, merges=[])._tokenizer  # Qwen2's normalizer + pre-tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = pipeline.normalizer
    bpe.pre_tokenizer = pipeline.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=1_000_000,  # no cap: merge until every word is one token
        min_frequency=1,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        show_progress=False,
    )
    words = sorted(set(words))
    bpe.train_from_iterator(words + [" " + " ".join(words)], trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
    )


def build_tiny_policy(out_dir: str | Path, words: list[str], cfg) -> Path:
    """Create (once) and save the tiny model + tokenizer in `out_dir`; returns the directory.

    cfg: the policy config (hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, init_seed).
    An existing directory built from the same words and config is reused as it is.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    out_dir = Path(out_dir)
    spec = {
        "words": sorted(set(words)),
        **{
            k: int(cfg[k])
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "init_seed",
            )
        },
    }
    spec_file = out_dir / "calmrl_tiny_spec.json"
    if spec_file.is_file() and json.loads(spec_file.read_text()) == spec:
        return out_dir

    tokenizer = build_tokenizer(spec["words"])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_layers"],
        num_attention_heads=spec["num_heads"],
        num_key_value_heads=spec["num_kv_heads"],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    # the same init seed gives the same starting weights, so runs with different RL seeds are comparable
    with torch.random.fork_rng():
        torch.manual_seed(spec["init_seed"])
        model = Qwen2ForCausalLM(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    spec_file.write_text(json.dumps(spec))  # written last: its presence marks a complete build
    return out_dir
