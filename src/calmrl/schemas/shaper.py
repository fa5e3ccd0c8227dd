"""The shaper group's schemas: PRM min-form, CALM's subgoal bonus, the token-reward shapers. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from calmrl.schemas.algo import TREG_BETTER, TREG_WORSE
from calmrl.schemas.common import DType
from calmrl.schemas.judge import JudgeConfig

#: the shaper that leaves the env's rewards as they are (`shaper=none`)
IDENTITY = "none"


@dataclass
class ShaperConfig:
    name: str = IDENTITY


def shapes_rewards(shaper_cfg) -> bool:
    """Whether `shaper_cfg` adds dense rewards at all; the identity needs no reward role of its own (no worker, no
    batch sent anywhere)."""
    return shaper_cfg.name != IDENTITY


@dataclass
class PRMConfig:
    path: str | None = None  # a PRM save_pretrained directory; None = the rule-based arithmetic verifier
    correct_label: int = 1  # token-classification label id of "step correct" (PURE's PRM: 1)
    wrong_label: int = 0  # label id of "step wrong" (PURE's PRM: 0); step reward = p(correct) - p(wrong)
    step_separator: str = "\n"  # appended after each step in the PRM input; the reward is read at its last token
    max_length: int = 4096  # PRM input tokens (question + steps); longer inputs keep the question and cut steps
    batch_size: int = 16  # PRM forward passes per batch
    dtype: DType = DType.float32
    trust_remote_code: bool = False
    neutral_reward: float = 0.0  # rule-based verifier: reward of a step with no checkable "a op b = c" claim


@dataclass
class PRMMinFormConfig(ShaperConfig):
    temperature: float = 0.1  # T of w = softmax(-r / T); .inf gives uniform weights (the sum form / K)
    prm: PRMConfig = field(default_factory=PRMConfig)


@dataclass
class CalmPrompts:
    decompose: str = MISSING  # fields: {task}
    achieved: str = MISSING  # fields: {task} {subgoals} {obs_before} {action} {obs_after}


@dataclass
class CalmConfig(ShaperConfig):
    bonus: float = 0.2  # lambda: reward for each subgoal achieved, at most once per episode
    max_subgoals: int = 8  # subgoals kept from a decomposition
    skip_unchanged: bool = True  # a transition whose observation did not change achieved nothing; not judged
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    prompts: CalmPrompts = field(default_factory=CalmPrompts)


# token-reward shapers (implicit-Q from a DPO policy, T-REG)
@dataclass
class ImplicitQShaperConfig(ShaperConfig):
    policy_path: str | None = None  # the DPO-trained policy (a save_pretrained directory); required
    ref_path: str | None = None  # its reference; None = the run's initial policy
    beta: float = 0.1  # r_t = beta * (log pi - log pi_ref)
    micro_batch_size: int = 32  # rows per scoring forward pass


@dataclass
class TRegShaperConfig(ShaperConfig):
    ref_path: str | None = None  # the model prompted contrastively; None = the run's initial policy
    scale: float = 1.0  # token reward = scale * (sigma(log pi_ref(.|x_better) - log pi_ref(.|x_worse)) - 0.5)
    better_template: str = TREG_BETTER
    worse_template: str = TREG_WORSE
    micro_batch_size: int = 32
