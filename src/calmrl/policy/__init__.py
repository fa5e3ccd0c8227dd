"""Policy models: loading a save_pretrained checkpoint, building the tiny default, prompts and parsing."""

from calmrl.policy.loading import load_policy, load_tokenizer
from calmrl.policy.template import PromptTemplate
from calmrl.policy.tiny import build_tiny_policy

__all__ = ["PromptTemplate", "build_tiny_policy", "load_policy", "load_tokenizer"]
