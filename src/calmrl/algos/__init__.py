"""Credit assignment. Each method is one file that registers a function `(batch, cfg) -> advantages[N, L]`.

`algo=<name>` in the config resolves through `ALGOS.get(name)`. The tensor functions inside each file
(e.g. `grpo_advantages`) are public API, usable without the trainer.
"""

from calmrl.algos import gigpo, grpo, ppo, reinforce_pp, rloo  # noqa: E402,F401  (register the algos by name)
from calmrl.algos.registry import ALGOS, register

__all__ = ["ALGOS", "register"]
