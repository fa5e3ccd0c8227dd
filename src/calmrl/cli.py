"""`calmrl <command> [hydra overrides]` — a thin dispatcher; each command is a @hydra.main entry.

    calmrl train                                  # embedded default (CPU, tiny model, gridworld, GRPO)
    calmrl train algo=grpo env.size=6 seed=1      # Hydra overrides
    calmrl train --cfg job                        # print the composed config and exit
    calmrl train -m seed=0,1,2                    # multirun sweep

Heavy imports (torch, transformers) happen only after the config has composed and validated, so a
bad override fails in well under a second.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig

from calmrl import __version__
from calmrl.config import register_schemas


def config_dir() -> str:
    """The shipped config tree: `calmrl/conf` in a wheel, the repository's `conf/` in an editable install."""
    packaged = resources.files("calmrl") / "conf"
    if packaged.is_dir():
        return str(packaged)
    source = Path(__file__).resolve().parents[2] / "conf"
    if source.is_dir():
        return str(source)
    raise SystemExit("calmrl: cannot find the config tree (calmrl/conf); reinstall the package")


register_schemas()
CONFIG_DIR = config_dir()


def _fail(message: str) -> None:
    print(f"calmrl: error: {message}", file=sys.stderr)
    raise SystemExit(2)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """Run training; returns the final greedy success rate (Hydra sweepers can optimise it)."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import ConfigError, validate
    from calmrl.registry import RegistryError

    try:
        validate(cfg)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))

    _quiet_libraries()
    from calmrl.policy.loading import PolicyLoadError
    from calmrl.trainer import Trainer

    try:
        summary = Trainer(cfg, Path(HydraConfig.get().runtime.output_dir)).run()
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))
    return summary["final_success_rate"]


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> float:
    """Evaluate a policy on held-out seeds; returns its success rate."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import ConfigError, validate_eval
    from calmrl.registry import RegistryError

    hydra_cfg = HydraConfig.get()
    try:
        cfg = _with_run_config(cfg, [o for o in hydra_cfg.overrides.task])
        validate_eval(cfg)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
    _quiet_libraries()
    from calmrl.policy.loading import PolicyLoadError
    from calmrl.tools.evaluate import run_eval_command

    try:
        return run_eval_command(cfg, Path(hydra_cfg.runtime.output_dir))["success_rate"]
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="compare")
def compare(cfg: DictConfig) -> None:
    """Plot and tabulate metrics of runs or sweeps against steps, grouped by a config key."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import ConfigError
    from calmrl.tools.compare import run_compare_command

    try:
        run_compare_command(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as exc:
        _fail(str(exc))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="inspect")
def inspect(cfg: DictConfig) -> None:
    """Roll out one group and show each estimator's credit per step and per token (HTML, PNG, terminal)."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import ConfigError, validate_eval
    from calmrl.registry import RegistryError

    hydra_cfg = HydraConfig.get()
    try:
        cfg = _with_run_config(cfg, list(hydra_cfg.overrides.task))
        validate_eval(cfg)
        if cfg.group_size < 2:
            raise ConfigError(f"group_size must be >= 2 for group baselines, got {cfg.group_size}")
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
    _quiet_libraries()
    from calmrl.policy.loading import PolicyLoadError
    from calmrl.tools.inspect_credit import run_inspect_command

    try:
        run_inspect_command(cfg, Path(hydra_cfg.runtime.output_dir))
    except (ConfigError, RegistryError, PolicyLoadError) as exc:
        _fail(str(exc))


def _with_run_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """When `checkpoint` names a training run, evaluate with that run's env / policy / rollout settings
    (so prompts match training), then re-apply this command's own key=value overrides on top."""
    from omegaconf import OmegaConf

    if not cfg.checkpoint:
        return cfg
    given = Path(cfg.checkpoint).expanduser()
    run_dir = next(
        (d for d in (given, given.parent, given.parent.parent) if (d / ".hydra" / "config.yaml").is_file()), None
    )
    if run_dir is None:
        return cfg
    trained = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    merged = OmegaConf.merge(cfg, {k: trained[k] for k in ("env", "policy", "rollout") if k in trained})
    dotted = [o for o in overrides if "=" in o and "." in o.split("=", 1)[0] and o[0] not in "+~"]
    return OmegaConf.merge(merged, OmegaConf.from_dotlist(dotted))


def _quiet_libraries() -> None:
    """calmrl prints its own progress; the libraries' per-file progress bars would drown it."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


COMMANDS = {
    "train": (train, "train a policy (roll out, assign credit, update, evaluate, checkpoint)"),
    "eval": (evaluate, "evaluate a checkpoint or model on an env's held-out seeds (JSON report)"),
    "inspect": (inspect, "roll out one group and show each estimator's credit per step and token (HTML + PNG)"),
    "compare": (compare, "plot and tabulate metrics of runs or sweeps against steps, mean and spread over seeds"),
}

USAGE = (
    "usage: calmrl <command> [hydra overrides...]\n\ncommands:\n"
    + "\n".join(f"  {name:<10}{help_}" for name, (_, help_) in COMMANDS.items())
    + "\n\n`calmrl <command> --help` lists config groups and options; `--cfg job` prints the composed config."
)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        print(f"calmrl {__version__}")
        return
    command = argv[0]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; commands: {', '.join(COMMANDS)}")
    entry, _ = COMMANDS[command]
    # Hydra reads sys.argv itself; hand it the overrides with the command name consumed.
    sys.argv = [f"calmrl {command}", *argv[1:]]
    entry()


if __name__ == "__main__":
    main()
