"""The algorithm registry, kept apart from `__init__` so method files can import it without cycles."""

from collections.abc import Callable

import torch

from calmrl.registry import Registry

#: (batch, algo_cfg) -> advantages [N, L] (zero outside the response mask)
AdvantageFn = Callable[..., torch.Tensor]

ALGOS: Registry[AdvantageFn] = Registry("algo")
register = ALGOS.register
