"""The policy group's schemas: the model directory, its dtype and response budget, the prompt template, and
the tiny default policy's shape. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from omegaconf import MISSING

from calmrl.schemas.common import DType


class PromptFormat(StrEnum):
    plain = "plain"  # the first line of the response is the action
    tagged = "tagged"  # <think>...</think><action>...</action>


@dataclass
class TemplateConfig:
    format: PromptFormat = PromptFormat.plain
    history_len: int = 2  # past (observation, action) pairs shown in the prompt
    chat: bool = False  # wrap the prompt in the tokenizer's chat template


@dataclass
class PolicyConfig:
    name: str = MISSING
    path: str | None = None  # a save_pretrained directory (config.json + safetensors + tokenizer)
    dtype: DType = DType.float32
    trust_remote_code: bool = False
    max_new_tokens: int = 256  # response budget per turn
    template: TemplateConfig = field(default_factory=TemplateConfig)


@dataclass
class TinyPolicyConfig(PolicyConfig):
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    init_seed: int = 0
