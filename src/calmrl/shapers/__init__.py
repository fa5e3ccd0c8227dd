"""Reward shapers: `shape(batch, cfg) -> batch`, adding dense rewards without touching the env's.

`shaper=<name>` resolves through `SHAPERS.get(name)`; `none` returns the batch unchanged.
"""

from calmrl.registry import Registry

SHAPERS: Registry = Registry("shaper")


@SHAPERS.register("none")
def no_shaping(batch, cfg):
    """The identity shaper: env rewards (with the invalid-action penalty) are used as they are."""
    return batch


__all__ = ["SHAPERS"]
