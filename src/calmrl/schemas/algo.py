"""The algo group's schemas: what `conf/algo/<name>.yaml` may set, its types, defaults and ranges.

Each algo yaml starts with `defaults: [/schema/algo/<name>@_here_, _self_]` and keeps only what differs from
the schema here. The ranges (`bounded(...)`) are checked by `validate_algo`, with the few rules that tie two
fields together. Imports no torch: a wrong value is refused before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from omegaconf import MISSING, DictConfig

from calmrl.errors import ConfigError, require
from calmrl.schemas.bounds import bounded, check_bounds


class Norm(StrEnum):
    std = "std"  # (R - mean) / (std + eps)
    mean = "mean"  # R - mean (Dr.GRPO-style, no std division)


class Loss(StrEnum):
    ppo_clip = "ppo_clip"
    reinforce = "reinforce"


class Anchor(StrEnum):
    exact = "exact"  # identical anchor strings form a step group
    similarity = "similarity"  # anchors with text similarity >= threshold are clustered (greedy)


class EpisodeStats(StrEnum):
    trajectory = "trajectory"  # one member per trajectory in the episode-level group statistics
    step_rows = "step_rows"  # one member per step row (the reference code's weighting)


class PenaltyRule(StrEnum):
    row = "row"  # subtract the penalty from the offending row's own score and return only (verl-agent)
    folded = "folded"  # the penalty is part of the step's reward: it enters the return and earlier steps' returns


class Singleton(StrEnum):
    raw = "raw"  # a group of one keeps its raw score (mean 0, std 1: the verl / verl-agent estimators)
    zero = "zero"  # a group of one has no baseline and gets 0


class Similarity(StrEnum):
    difflib = "difflib"  # difflib.SequenceMatcher(None, a, b).ratio(), as verl-agent's GiGPO
    indel = "indel"  # rapidfuzz's normalized Indel similarity (LCS based): the same idea, much faster


class Critic(StrEnum):
    separate = "separate"  # a separate critic: the policy's trunk (a copy) with a scalar value head


# ---------------------------------------------------------------- algo
@dataclass
class AlgoConfig:
    name: str = MISSING
    lr: float = bounded(1e-6, gt=0)  # the yamls set 1e-3 for the tiny policy; the 1.5B presets 1e-6
    loss: Loss = Loss.ppo_clip
    clip_ratio: float = bounded(0.2, gt=0, lt=1)  # PPO's epsilon: the ratio is clipped to [1 - eps, 1 + eps]
    kl_coef: float = bounded(0.0, ge=0)  # weight of the low-variance KL to the frozen reference policy
    ppo_epochs: int = bounded(1, ge=1)  # passes over the batch per iteration
    minibatch_size: int = bounded(256, ge=1)  # step rows per optimizer step
    # c > 1: dual-clip PPO on negative advantages (Ye et al., 2020); None: off
    dual_clip: float | None = bounded(None, gt=1, hint="(verl uses 3.0)")
    entropy_coef: float = bounded(0.0, ge=0)  # weight of the token-mean entropy bonus (verl's entropy_coeff: 0.001)


@dataclass
class GroupBaselineConfig(AlgoConfig):
    """What the group estimators (grpo, rloo, gigpo) share. The defaults here are the papers' form (one member per
    trajectory, the penalty in the step reward); verl-agent's code is episode_stats=step_rows, singleton=raw,
    penalty_rule=row, which gigpo defaults to and the GiGPO presets set."""

    penalty_rule: PenaltyRule = PenaltyRule.folded  # how env.invalid_penalty enters credit (data.apply_penalty_rule)
    episode_stats: EpisodeStats = EpisodeStats.trajectory  # members of the group statistics
    singleton: Singleton = Singleton.zero  # a group with one member


@dataclass
class GRPOConfig(GroupBaselineConfig):
    norm_adv: Norm = Norm.std  # std: (R - mean) / (std + eps), the paper; mean: R - mean (Dr. GRPO)
    eps: float = bounded(1e-6, gt=0)


@dataclass
class RLOOConfig(GroupBaselineConfig):
    pass


@dataclass
class ReinforcePPConfig(AlgoConfig):
    kl_beta: float = bounded(0.01, ge=0)  # weight of the per-token KL penalty folded into the reward
    gamma: float = bounded(1.0, ge=0, le=1)
    eps: float = bounded(1e-6, gt=0)
    penalty_rule: PenaltyRule = PenaltyRule.row  # the row's outcome is its episode score minus its own penalty


@dataclass
class CriticConfig(AlgoConfig):
    """What the methods with a learned token-level critic (ppo, ma_ppo) share."""

    gamma: float = bounded(1.0, ge=0, le=1)
    lam: float = bounded(0.95, ge=0, le=1)  # GAE's lambda
    critic: Critic = Critic.separate
    critic_path: str | None = None  # checkpoint whose trunk initialises the critic (default: the policy's)
    critic_lr: float = bounded(1e-5, gt=0)
    value_clip: float = bounded(0.2, gt=0)  # clip of the value update around the rollout-time value
    critic_warmup_iters: int = bounded(0, ge=0)  # iterations that train only the critic


class Sequence(StrEnum):
    trajectory = "trajectory"  # GAE over the trajectory's response tokens, each step's reward on its last token
    step = "step"  # each step row alone, its episode score on its last token (verl-agent's PPO)


@dataclass
class PPOConfig(CriticConfig):
    sequence: Sequence = Sequence.trajectory  # what one GAE sequence is
    whiten_advantages: bool = False  # whiten the GAE advantages over the batch's response tokens (verl: on)
    penalty_rule: PenaltyRule = PenaltyRule.folded  # row needs sequence=step: the row's score less its own penalty


@dataclass
class GiGPOConfig(GroupBaselineConfig):
    # verl-agent's gigpo/core_gigpo.py and apply_invalid_action_penalty (docs/algos/gigpo.md)
    penalty_rule: PenaltyRule = PenaltyRule.row
    episode_stats: EpisodeStats = EpisodeStats.step_rows
    singleton: Singleton = Singleton.raw
    anchor: Anchor = Anchor.exact
    similarity: Similarity = Similarity.difflib  # anchor=similarity: the text similarity
    similarity_threshold: float = bounded(0.95, gt=0, le=1)  # anchor=similarity: ratio needed to join a cluster
    norm_adv: Norm = Norm.std
    omega: float = bounded(1.0, ge=0)  # weight of the step-level advantage
    gamma: float = bounded(0.95, ge=0, le=1)  # discount of the step-level returns
    eps: float = bounded(1e-6, gt=0)


class Termination(StrEnum):
    ngram = "ngram"  # a macro every n tokens
    random = "random"  # macro lengths drawn from random_lengths
    parse = "parse"  # a token containing one of parse_chars ends its macro
    perplexity = "perplexity"  # token i starts a macro when ppl[i+1] > ppl[i] (MA-RLHF's ppl_selection)


class MacroAgg(StrEnum):
    mean = "mean"  # every token of the macro weighs the same (the paper's default)
    first = "first"  # the macro's first token
    last = "last"  # the macro's last token
    position = "position"  # weight 1/(j+1) for the macro's j-th token


@dataclass
class MAPPOConfig(CriticConfig):
    termination: Termination = Termination.ngram
    ngram: int = bounded(5, ge=1)  # termination=ngram: tokens per macro
    random_lengths: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])  # termination=random
    # termination=random: every length is used this many times per response, in a random order, and the rest
    # of the response is one macro (the reference's repeat_times); None = i.i.d. draws that never run out
    random_repeat: int | None = bounded(10, ge=1)
    parse_chars: str = ".,;:!?\n"  # termination=parse: characters that end a macro
    macro_agg: MacroAgg = MacroAgg.mean  # how token values/rewards make the macro's V_k and r_k
    last_token_macro: bool = True  # each step's last response token is a macro of its own


class VTargetAction(StrEnum):
    policy = "policy"  # y_V at a fresh sample a ~ pi(. | s) from the current policy (the paper)
    buffer = "buffer"  # y_V at the action stored in the replay buffer (no generation in critic steps)


@dataclass
class ArcherConfig(AlgoConfig):
    loss: Loss = Loss.reinforce  # the token-level actor is REINFORCE with the utterance advantage
    gamma: float = bounded(0.95, ge=0, le=1)
    tau: float = bounded(0.1, ge=0, le=1)  # soft update of the target critic
    encoder_path: str | None = None  # any HF encoder directory; None = a tiny random BERT under the run dir
    encoder_hidden_size: int = bounded(32, ge=1)  # the tiny encoder
    encoder_layers: int = bounded(1, ge=1)
    max_length: int = bounded(256, ge=1)  # encoder tokens per state / utterance (states keep their end)
    critic_lr: float = bounded(1e-5, gt=0)
    critic_steps: int = bounded(50, ge=0)  # critic minibatches per iteration
    critic_batch_size: int = bounded(256, ge=1)
    critic_max_grad_norm: float = bounded(1.0, gt=0)
    critic_warmup_iters: int = bounded(20, ge=0)  # iterations that train only the critic
    replay_capacity: int = bounded(100_000, ge=1)  # transitions kept
    v_target_action: VTargetAction = VTargetAction.policy


class RewardBaseline(StrEnum):
    token = "token"  # RLOO mean process reward per token of the other responses x the step's tokens (PURE script)
    step = "step"  # RLOO mean process reward per step of the other responses, once per step


@dataclass
class PUREConfig(AlgoConfig):
    kl_coef: float = bounded(0.001, ge=0)  # the paper's (the low-variance KL to the reference, in the loss)
    verifiable_coef: float = 1.0  # weight of the env's verifiable reward (RLOO-centred) at the last token; 0 = PRM only
    reward_baseline: RewardBaseline = RewardBaseline.token
    mask_step_end: bool = True  # zero advantage on the tokens that carry a step reward (the reference's default)
    # whiten the advantages over the rollout batch, zeros kept at 0 (the reference's default; algos/pure.py)
    whiten_advantages: bool = True


class BudgetPrior(StrEnum):
    uniform = "uniform"  # p_j = 1/S
    linear = "linear"  # p_j proportional to b_j
    base = "base"  # all mass on the full budget (p_S = 1)


class VarianceReduction(StrEnum):
    brpo = "brpo"  # baseline (s V1 + (S - s) V2) / S
    v1only = "v1only"
    v2only = "v2only"
    none = "none"


class SummaryMethod(StrEnum):
    brpo = "brpo"  # every summary gets r - mean of the summaries of its split
    grpo = "grpo"  # only the last summary of the full budget is trained


@dataclass
class BRPOConfig(AlgoConfig):
    budget: int = 8000  # B: thinking tokens; budgets b_j = (B / S) j
    num_budgets: int = bounded(4, ge=1)  # S
    num_summaries: int = bounded(4, ge=1)  # A: summaries sampled per budget
    budget_prior: BudgetPrior = BudgetPrior.uniform
    variance_reduction: VarianceReduction = VarianceReduction.brpo
    summary_method: SummaryMethod = SummaryMethod.brpo
    v1_discount: float = bounded(2.0, gt=0)  # V1 weighs the score of earlier budget j by v1_discount ** j
    summary_max_tokens: int = bounded(128, ge=1)
    truncated_suffix: str = "...\n\n...\n\n</think>\n\n**Final Answer**\n"  # after thinking cut at a budget (reference)
    finished_suffix: str = "\n\n</think>\n\n**Final Answer**\n"  # after thinking that ended by itself


# ---------------------------------------------------------------- preference (dpo, dpo_treg)
TREG_BETTER = "Improve the response: make it more helpful, correct and honest.\n{prompt}"
TREG_WORSE = "Worsen the response: make it less helpful, incorrect and dishonest.\n{prompt}"


@dataclass
class DPOConfig(AlgoConfig):
    # an iteration is one optimizer step on `minibatch_size` pairs; trainer.total_iters counts them
    beta: float = bounded(0.1, gt=0)  # implicit reward scale: r(y) = beta * log(pi(y|x) / pi_ref(y|x))
    eval_fraction: float = bounded(0.1, ge=0, lt=1)  # held-out pairs (when the data set has no test/validation split)
    max_length: int = bounded(1024, ge=2)  # prompt + response tokens; the response is cut at the end
    max_prompt_length: int = 512  # the prompt keeps its last tokens


@dataclass
class DPOTRegConfig(DPOConfig):
    alpha: float = bounded(0.25, ge=0)  # weight of the token-level regulariser (the paper searches {0.1, 0.25, 0.5})
    better_template: str = TREG_BETTER  # x_better: `{prompt}` inside an "improve" instruction
    worse_template: str = TREG_WORSE  # x_worse: `{prompt}` inside a "worsen" instruction


# ---------------------------------------------------------------- multi-agent (algo=gmah|ippo)
@dataclass
class GMAHConfig(AlgoConfig):
    num_envs: int = bounded(64, ge=1)  # episodes played in lockstep per iteration
    gamma: float = bounded(0.95, ge=0, le=1)  # high-level (team) discount, applied per env step inside an option
    low_gamma: float = bounded(0.9, ge=0, le=1)  # low-level (intrinsic) discount
    low_step_cost: float = 0.05  # intrinsic cost per step before the subgoal is reached
    option_len: int = bounded(4, ge=1)  # longest a subgoal is pursued before the team re-plans
    hidden: int = bounded(64, ge=1)
    mixer_embed: int = bounded(32, ge=1)
    buffer_size: int = bounded(50_000, ge=1)  # transitions kept by each replay buffer
    batch_size: int = bounded(256, ge=1)
    updates_per_iter: int = bounded(16, ge=1)
    eps_start: float = bounded(1.0, ge=0, le=1)  # epsilon-greedy exploration, decayed linearly to eps_end
    eps_end: float = bounded(0.05, ge=0, le=1)
    eps_decay_iters: int = bounded(60, ge=1)
    target_tau: float = bounded(0.05, gt=0, le=1)  # soft update of the target networks per gradient step


@dataclass
class IPPOConfig(AlgoConfig):
    num_envs: int = bounded(64, ge=1)
    gamma: float = bounded(0.95, ge=0, le=1)
    lam: float = bounded(0.95, ge=0, le=1)
    hidden: int = bounded(64, ge=1)
    entropy_coef: float = bounded(0.01, ge=0)


def validate_algo(algo: DictConfig) -> None:
    """The ranges written on the fields, then the rules that tie fields together. ConfigError naming the fix."""
    check_bounds(algo, "algo")
    if "random_lengths" in algo:
        lengths = list(algo.random_lengths)
        require(bool(lengths) and min(lengths) >= 1, f"algo.random_lengths must be lengths >= 1, got {lengths}")
    if "budget" in algo:
        require(
            algo.budget >= algo.num_budgets and algo.budget % algo.num_budgets == 0,
            f"algo.budget={algo.budget} must be a positive multiple of algo.num_budgets={algo.num_budgets} "
            "(conf/algo/brpo.yaml: the budget defaults to rollout.max_new_tokens = policy.max_new_tokens)",
        )
    if "max_prompt_length" in algo:
        require(
            1 <= algo.max_prompt_length < algo.max_length,
            f"algo.max_prompt_length must be in [1, algo.max_length={algo.max_length}), got {algo.max_prompt_length}",
        )
    for key in ("better_template", "worse_template"):
        if key in algo:
            require("{prompt}" in algo[key], f"algo.{key} must contain {{prompt}}, got {algo[key]!r}")
    if algo.get("penalty_rule") == "row" and algo.get("sequence") == "trajectory":
        raise ConfigError(
            "algo.penalty_rule=row scores each step row apart, which GAE over the whole trajectory cannot: set "
            "algo.sequence=step (verl-agent's PPO) or keep algo.penalty_rule=folded (the penalty in the step reward)"
        )
    if algo.get("penalty_rule") == "row" and algo.get("episode_stats") == "trajectory":
        # the rows of one trajectory then score differently, which trajectory statistics cannot hold: a group
        # whose trajectories all return the same would divide the penalty by eps
        raise ConfigError(
            "algo.penalty_rule=row scores each step row apart, so the group statistics must be over step rows: "
            "set algo.episode_stats=step_rows (verl-agent), or keep episode_stats=trajectory with "
            "algo.penalty_rule=folded (the penalty inside the step reward and the return)"
        )
    if algo.get("encoder_path"):
        require(
            Path(algo.encoder_path).expanduser().is_dir(), f"algo.encoder_path={algo.encoder_path} is not a directory"
        )
    if algo.get("critic_path"):
        require(
            Path(algo.critic_path).expanduser().is_dir(),
            f"algo.critic_path={algo.critic_path} is not a directory; give a save_pretrained checkpoint directory, "
            "or leave it unset to start the critic from the policy",
        )
