"""The algorithm registry, kept apart from `__init__` so method files can import it without cycles."""

from collections.abc import Callable

import torch

from calmrl.registry import Registry

#: (batch, algo_cfg) -> advantages [N, L] (zero outside the response mask)
AdvantageFn = Callable[..., torch.Tensor]

ALGOS: Registry[AdvantageFn] = Registry("algo")

#: batch fields an advantage function may ask the trainer to fill before calling it
REQUIREMENTS = frozenset({"ref_logprobs", "values"})


def register(name: str, requires: tuple[str, ...] = ()):
    """Register `fn` as `algo=<name>`; `requires` names extra batch fields it reads (see REQUIREMENTS)."""
    unknown = set(requires) - REQUIREMENTS
    if unknown:
        raise ValueError(f"unknown requirements {sorted(unknown)}; known: {sorted(REQUIREMENTS)}")

    def add(fn: AdvantageFn) -> AdvantageFn:
        fn.requires = frozenset(requires)
        return ALGOS.register(name)(fn)

    return add
