"""The logger group's schema (logger=console | jsonl | wandb). Imports no torch (and no wandb)."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from calmrl.schemas.bounds import bounded


@dataclass
class LoggerConfig:
    name: str = MISSING
    table_every: int = bounded(10, ge=1)  # console: print a metrics table every N iterations
    project: str = "calmrl"  # wandb
    entity: str | None = None
    mode: str | None = None  # wandb: online | offline; None = online iff WANDB_API_KEY is set
