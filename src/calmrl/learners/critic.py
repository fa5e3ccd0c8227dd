"""The critic for PPO: a transformer trunk with a scalar value head, V_t at every token.

`ValueModel.from_pretrained(path)` loads the trunk of any causal-LM checkpoint (the policy's own, by
default) through `AutoModel`, so the critic starts from the same features as the policy; the head starts
at zero so initial values are 0 rather than noise.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueModel(nn.Module):
    def __init__(self, trunk: nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        # skip_init: a head that starts at zero needs no random draw, and drawing one would shift the run's
        # sampling stream by where the critic is built (the trainer's process, or a learner rank under Ray)
        self.head = nn.utils.skip_init(nn.Linear, hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_pretrained(cls, path, dtype: torch.dtype = torch.float32) -> ValueModel:
        from transformers import AutoModel

        trunk = AutoModel.from_pretrained(path, dtype=dtype, use_safetensors=True)
        return cls(trunk, trunk.config.hidden_size).to(dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask: [n, L] -> values [n, L] (float32)."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def clipped_value_loss(values, old_values, returns, mask, clip: float) -> torch.Tensor:
    """PPO's clipped value loss: 0.5 * max((V - R)^2, (clip(V, V_old +- c) - R)^2), token mean over mask.

    values, old_values, returns, mask: [n, L]. Returns a scalar.
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (loss * mask).sum() / mask.sum().clamp(min=1.0)
