"""The learner group's schemas (learner=torch | deepspeed). Ranges on the fields; imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from calmrl.schemas.bounds import bounded
from calmrl.schemas.common import DType


@dataclass
class LearnerConfig:
    name: str = MISSING
    micro_batch_size: int = bounded(64, ge=1)  # rows per forward/backward (gradient accumulation inside a minibatch)
    max_grad_norm: float = bounded(1.0, gt=0)  # gradients are clipped to this global norm
    weight_decay: float = bounded(0.0, ge=0)  # AdamW's decoupled weight decay


@dataclass
class DeepSpeedLearnerConfig(LearnerConfig):
    zero_stage: int = bounded(
        2, ge=0, le=3
    )  # 2: shard optimizer state + gradients; 3: also the weights (conf/learner/deepspeed.yaml)
    dtype: DType = DType.float32  # bfloat16: bf16 weights/activations, fp32 master weights in the optimizer
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False  # optimizer state (and its step) in CPU memory
    offload_params: bool = False  # ZeRO-3 only: the weight partitions in CPU memory too
    bucket_size: int = bounded(50_000_000, ge=1)  # elements per gradient-reduce / ZeRO-3 prefetch bucket
