"""The algorithm registry, kept apart from `__init__` so method files can import it without cycles."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from calmrl.registry import Registry

#: (batch, algo_cfg) -> advantages [N, L] (zero outside the response mask)
AdvantageFn = Callable[..., torch.Tensor]

ALGOS: Registry["Method"] = Registry("algo")

#: batch fields an advantage function may ask the trainer to fill before calling it
REQUIREMENTS = frozenset({"ref_logprobs", "values"})


class AlgoState(Protocol):
    """State an algo keeps across iterations (e.g. ArCHer's utterance critic and replay buffer).

    Built by the trainer as `state(algo_cfg, tokenizer=..., policy_path=..., run_dir=..., device=..., seed=...)`.
    Each iteration, before the advantages, it sees the iteration's trajectories and batch in two halves, so that
    whoever hosts it (this process or a Ray worker) can answer its questions to the policy in between:
    `begin` returns the prompts it wants the current policy's responses to (one list per sampling call, in
    order), `end` takes the responses (one list of texts per prompt list) and returns metrics. Its tensors are
    checkpointed as the `algo_state` extra.
    """

    #: it holds a model of its own (ArCHer's critic): under cluster=ray it lives on a worker, not the driver
    holds_model: bool

    def begin(self, trajectories, batch, it: int) -> list[list[str]]: ...

    def end(self, responses: list[list[str]]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def observe(state: AlgoState, trajectories, batch, it: int, sample: Callable[[list[str]], list[str]]):
    """One iteration of `state` in this process: `begin`, the policy's responses (`sample(prompts) -> texts`) to
    each prompt list it asks about, `end`. Returns its metrics."""
    return state.end([sample(prompts) for prompts in state.begin(trajectories, batch, it)])


@dataclass(frozen=True)
class Method:
    """What a credit-assignment method is, as the loops see it: they branch on these fields, never on `name`.

    Calling it computes the advantages: `method(batch, algo_cfg, **kwargs) -> advantages [N, L]`."""

    name: str
    advantages: AdvantageFn
    #: batch fields the trainer fills before the call: ref_logprobs (a frozen reference), values (a critic)
    requires: frozenset[str] = frozenset()
    #: places a shaper's dense token rewards itself (token-level returns); otherwise they are folded into the step
    reads_token_rewards: bool = False
    #: an AlgoState class kept across iterations (checkpointed as `algo_state`); None: stateless
    state: type | None = None
    #: its own episode program, called as the rollout (algo=brpo); None: the multi-turn episode loop
    rollout: Callable[..., Any] | None = None
    #: offline on preference pairs (data=...): the per-pair loss; None: it trains on rollouts
    pair_loss: Callable[..., Any] | None = None
    #: offline: the pair loss reads token rewards precomputed with the reference (T-REG)
    needs_token_rewards: bool = False

    def __call__(self, batch, cfg, **kwargs) -> torch.Tensor:
        return self.advantages(batch, cfg, **kwargs)

    @property
    def needs_ref(self) -> bool:
        return "ref_logprobs" in self.requires

    @property
    def needs_critic(self) -> bool:
        return "values" in self.requires

    @property
    def offline(self) -> bool:
        return self.pair_loss is not None


def register(
    name: str,
    requires: tuple[str, ...] = (),
    reads_token_rewards: bool = False,
    state=None,
    rollout=None,
    pair_loss=None,
    needs_token_rewards: bool = False,
):
    """Register `fn` as `algo=<name>`: a `Method` record of `fn` and what the method needs (see `Method`);
    `requires` names extra batch fields it reads (see REQUIREMENTS). `fn` itself is returned unchanged, so the
    module's function stays plain public API.

    `reads_token_rewards`: the method places a shaper's dense `batch.token_rewards` on their tokens itself
    (token-level returns, as PPO/GAE do). For the others the trainer folds each row's token rewards into that
    step's reward before credit assignment (`calmrl.data.fold_shaping`), so every shaper composes with every algo.

    `state`: a class for methods that keep state across iterations (see `AlgoState`); the trainer builds it
    once, lets it see each iteration's trajectories (`observe`) and calls `fn(batch, cfg, state=...)`.
    """
    unknown = set(requires) - REQUIREMENTS
    if unknown:
        raise ValueError(f"unknown requirements {sorted(unknown)}; known: {sorted(REQUIREMENTS)}")

    def add(fn: AdvantageFn) -> AdvantageFn:
        method = Method(
            name, fn, frozenset(requires), reads_token_rewards, state, rollout, pair_loss, needs_token_rewards
        )
        ALGOS.register(name)(method)
        return fn

    return add
