"""DPO, T-REG and the implicit token-level reward of a DPO policy.

- DPO (Rafailov et al., 2023, "Direct Preference Optimization"): the policy's implicit reward of a response is
  r(y) = beta * (log pi(y|x) - log pi_ref(y|x)), and the loss on a preference pair (y_w > y_l) is
      L_DPO = -log sigma(r(y_w) - r(y_l)).
- Implicit Q (Rafailov et al., 2024, "From r to Q*: Your Language Model is Secretly a Q-Function"): the same
  reward decomposes over tokens, r_t = beta * (log pi(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t)), and sum_t r_t = r(y).
- T-REG (Zhou et al., 2024, "T-REG: Preference Optimization with Token-Level Reward Regularization"): token
  rewards from contrastive prompting of the reference model,
      r_hat_t = sigma(log pi_ref(y_t | x_better, y_<t) - log pi_ref(y_t | x_worse, y_<t)) - 0.5   in (-0.5, 0.5),
  where x_better / x_worse are the prompt with an "improve" / "worsen" instruction, regularise how DPO spreads
  the sequence reward over tokens:
      L = L_DPO + alpha * w * (L_REG(y_w) + L_REG(y_l)),   L_REG(y) = -sum_t beta * r_hat_t * log pi_theta(y_t),
      w = sigma(r(y_l) - r(y_w))   (detached: pairs DPO already orders correctly are regularised less).

Tensors: a batch of P pairs is 2P rows, the P chosen responses first, then the P rejected ones, in the trainer's
[N, L] token layout (`mask` = 1 on response tokens). `algo=dpo` / `algo=dpo_treg` train offline on a preference
data set (`calmrl.preference`); they assign no advantages to rollouts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from calmrl.algos.registry import register


# ---------------------------------------------------------------- token and sequence rewards
def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) = sum of the response tokens' log-probs. token_logprobs, mask: [N, L] -> [N]."""
    return (token_logprobs * mask).sum(dim=-1)


def implicit_q_rewards(
    policy_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """Implicit token rewards of a DPO policy ("From r to Q*"): r_t = beta * (log pi - log pi_ref) on response tokens.

    policy_logprobs, ref_logprobs, mask: [N, L] -> [N, L], zero outside the mask. Row sums are the DPO sequence
    rewards beta * (log pi(y|x) - log pi_ref(y|x)).
    """
    return beta * (policy_logprobs - ref_logprobs) * mask


def treg_token_rewards(better_logprobs: torch.Tensor, worse_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """T-REG token rewards r_hat_t = sigma(log pi_ref(y_t|x_better,.) - log pi_ref(y_t|x_worse,.)) - 0.5.

    better_logprobs, worse_logprobs: [N, L] reference log-probs of the same response tokens after the "improve" and
    the "worsen" prompt; mask: [N, L]. Returns [N, L] in (-0.5, 0.5), zero outside the mask: positive where the
    improve-prompted reference likes the token more than the worsen-prompted one.
    """
    return (torch.sigmoid(better_logprobs - worse_logprobs) - 0.5) * mask


def treg_prompts(prompt: str, better_template: str, worse_template: str) -> tuple[str, str]:
    """x_better, x_worse: the prompt inside the "improve" and "worsen" instruction templates (`{prompt}` marks it)."""
    return better_template.format(prompt=prompt), worse_template.format(prompt=prompt)


# ---------------------------------------------------------------- losses
def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss -log sigma(r(y_w) - r(y_l)), r(y) = beta * (log pi(y|x) - log pi_ref(y|x)).

    All inputs are sequence log-probs [P]. Returns (loss [P], r(y_w) [P], r(y_l) [P]); the rewards carry gradient.
    logsigmoid keeps the loss finite for any margin (log(sigmoid(m)) underflows for m << 0).
    """
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward), chosen_reward, rejected_reward


def treg_regularizer(
    policy_logprobs: torch.Tensor, token_rewards: torch.Tensor, mask: torch.Tensor, beta: float
) -> torch.Tensor:
    """L_REG(y) = -sum_t beta * r_hat_t * log pi_theta(y_t). Inputs [N, L]; returns [N].

    Minimising it raises the log-prob of tokens with r_hat_t > 0 and lowers it where r_hat_t < 0.
    """
    return -(beta * token_rewards * policy_logprobs * mask).sum(dim=-1)


def dpo_treg_loss(
    policy_logprobs: torch.Tensor,
    mask: torch.Tensor,
    ref_seq: torch.Tensor,
    token_rewards: torch.Tensor,
    beta: float,
    alpha: float,
) -> dict[str, torch.Tensor]:
    """T-REG loss per pair: L_DPO + alpha * w * (L_REG(y_w) + L_REG(y_l)), w = sigma(r(y_l) - r(y_w)) detached.

    policy_logprobs, mask, token_rewards: [2P, L] (P chosen rows, then P rejected rows); ref_seq: [2P] reference
    sequence log-probs. alpha = 0 gives exactly the DPO loss. Returns per-pair [P] tensors: "loss", "dpo", "reg"
    (L_REG(y_w) + L_REG(y_l)), "weight" (w), "chosen_reward", "rejected_reward".
    """
    p = policy_logprobs.shape[0] // 2
    seq = sequence_logprobs(policy_logprobs, mask)
    dpo, chosen_r, rejected_r = dpo_loss(seq[:p], seq[p:], ref_seq[:p], ref_seq[p:], beta)
    reg_rows = treg_regularizer(policy_logprobs, token_rewards, mask, beta)
    reg = reg_rows[:p] + reg_rows[p:]
    weight = torch.sigmoid(rejected_r - chosen_r).detach()
    return {
        "loss": dpo + alpha * weight * reg,
        "dpo": dpo,
        "reg": reg,
        "weight": weight,
        "chosen_reward": chosen_r,
        "rejected_reward": rejected_r,
    }


def dpo_pair_loss(policy_logprobs, mask, ref_seq, token_rewards, cfg) -> dict[str, torch.Tensor]:
    """`algo=dpo`: the per-pair DPO loss in the layout of `dpo_treg_loss` (token_rewards is unused)."""
    p = policy_logprobs.shape[0] // 2
    seq = sequence_logprobs(policy_logprobs, mask)
    dpo, chosen_r, rejected_r = dpo_loss(seq[:p], seq[p:], ref_seq[:p], ref_seq[p:], float(cfg.beta))
    return {"loss": dpo, "dpo": dpo, "chosen_reward": chosen_r, "rejected_reward": rejected_r}


def treg_pair_loss(policy_logprobs, mask, ref_seq, token_rewards, cfg) -> dict[str, torch.Tensor]:
    """`algo=dpo_treg`: `dpo_treg_loss` with the config's beta and alpha."""
    return dpo_treg_loss(policy_logprobs, mask, ref_seq, token_rewards, float(cfg.beta), float(cfg.alpha))


# ---------------------------------------------------------------- registration
def _offline_algo(name: str, pair_loss, needs_token_rewards: bool):
    def advantages(batch, cfg, **_):
        raise ValueError(
            f"algo={name} trains offline on preference pairs (data=...); it assigns no advantages to rollouts"
        )

    advantages.__name__ = advantages.__qualname__ = name
    # a pair loss makes the method offline: calmrl.loops hands it to `calmrl.preference.PreferenceTrainer`;
    # T-REG's token rewards are precomputed with the reference (needs_token_rewards)
    return register(name, pair_loss=pair_loss, needs_token_rewards=needs_token_rewards)(advantages)


dpo = _offline_algo("dpo", dpo_pair_loss, needs_token_rewards=False)
dpo_treg = _offline_algo("dpo_treg", treg_pair_loss, needs_token_rewards=True)
