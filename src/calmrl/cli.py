"""`calmrl <command> [hydra overrides]` — a thin dispatcher; each command is a @hydra.main entry.

    calmrl train                                  # embedded default (CPU, tiny model, gridworld, GRPO)
    calmrl train algo=grpo env.size=6 seed=1      # Hydra overrides
    calmrl train --cfg job                        # print the composed config and exit
    calmrl train -m seed=0,1,2                    # multirun sweep

Heavy imports (torch, transformers) happen only after the config has composed and validated, so a
bad override fails in well under a second.
"""

from __future__ import annotations

import logging
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
    _drop_rejected_job_dir()
    raise SystemExit(2)


def _drop_rejected_job_dir() -> None:
    """Hydra makes the job's output directory, its `<job>.log` and (where `hydra.output_subdir` is set: every
    command but train) its `.hydra/` record before the command has checked its input; a rejected command removes
    the directory again when that is all it holds (and any parents it leaves empty, below the working
    directory). A directory with anything else in it (a run's metrics, checkpoints, reports) stays."""
    import logging
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return  # a composition error: Hydra made nothing
    hydra_cfg = HydraConfig.get()
    job_dir = Path(hydra_cfg.runtime.output_dir)
    made_by_hydra = {f"{hydra_cfg.job.name}.log", *([hydra_cfg.output_subdir] if hydra_cfg.output_subdir else [])}
    if not job_dir.is_dir() or any(p.name not in made_by_hydra for p in job_dir.iterdir()):
        return
    for handler in logging.getLogger().handlers:  # Hydra's file handler still holds the log open
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == job_dir:
            handler.close()
    shutil.rmtree(job_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in job_dir.resolve().parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def train(cfg: DictConfig) -> float | None:
    """Run training; returns the final greedy success rate (Hydra sweepers can optimise it)."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import validate
    from calmrl.errors import ConfigError
    from calmrl.registry import RegistryError

    try:
        validate(cfg)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
    from calmrl.cluster.slurm import SlurmError, join_allocation

    try:  # inside a multi-node SLURM job: node 0 starts the Ray head and trains, the others serve as Ray workers
        if not join_allocation(cfg, run_dir=Path(HydraConfig.get().runtime.output_dir)):
            return None
    except SlurmError as exc:
        _fail(str(exc))

    _quiet_libraries()
    from calmrl.learners.checkpoint import CheckpointError
    from calmrl.loops import build_trainer
    from calmrl.policy.loading import PolicyLoadError

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        trainer = build_trainer(cfg, run_dir)
    except (ConfigError, PolicyLoadError, CheckpointError) as exc:
        _fail(str(exc))
    _save_run_config(run_dir, cfg)  # only now: a rejected command must leave an existing run as it was
    try:
        summary = trainer.run()
    except (ConfigError, PolicyLoadError) as exc:
        _fail(str(exc))
    return summary["final_success_rate"]


def _save_run_config(run_dir: Path, cfg: DictConfig) -> None:
    """Write `.hydra/{config,hydra,overrides}.yaml` as Hydra does. conf/train.yaml turns Hydra's own write off
    (`hydra.output_subdir: null`): Hydra writes them before the command has checked its input, so a rejected
    `calmrl train` would overwrite the record of the run it was pointed at."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    hydra_node = HydraConfig.instance().cfg  # {"hydra": ...}
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", hydra_node),
        ("overrides.yaml", hydra_node.hydra.overrides.task),
    ):
        (out / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def evaluate(cfg: DictConfig) -> float:
    """Evaluate a policy on held-out seeds; returns its success rate."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import validate_eval
    from calmrl.errors import ConfigError
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

    from calmrl.errors import ConfigError
    from calmrl.tools.compare import run_compare_command

    try:
        run_compare_command(cfg, Path(HydraConfig.get().runtime.output_dir))
    except ConfigError as exc:
        _fail(str(exc))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="inspect")
def inspect(cfg: DictConfig) -> None:
    """Roll out one group and show each estimator's credit per step and per token (HTML, PNG, terminal)."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import validate_eval
    from calmrl.errors import ConfigError
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


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval_credit")
def eval_credit(cfg: DictConfig) -> float:
    """Score a judge's subgoal labels against annotated demonstrations; returns the overall (micro) F1."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import validate_calm
    from calmrl.errors import ConfigError
    from calmrl.registry import RegistryError

    try:
        if not Path(cfg.demos).expanduser().is_file():
            raise ConfigError(f"demos={cfg.demos} is not a file; give annotated demonstrations (JSONL, docs/judges.md)")
        validate_calm(cfg.shaper)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
    from calmrl.judges import JudgeError
    from calmrl.tools.eval_credit import DemoFormatError, run_eval_credit_command

    try:
        return run_eval_credit_command(cfg, Path(HydraConfig.get().runtime.output_dir))["overall"]["f1"]
    except (JudgeError, DemoFormatError, RegistryError) as exc:
        _fail(str(exc))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="replay")
def replay(cfg: DictConfig) -> None:
    """Compare estimators on a run's recorded batches: advantages, gradient SNR, cosine with a reference."""
    from hydra.core.hydra_config import HydraConfig

    from calmrl.config import validate_replay
    from calmrl.errors import ConfigError
    from calmrl.registry import RegistryError

    try:
        validate_replay(cfg)
    except (ConfigError, RegistryError) as exc:
        _fail(str(exc))
    _quiet_libraries()
    from calmrl.policy.loading import PolicyLoadError
    from calmrl.tools.replay import run_replay_command

    try:
        run_replay_command(cfg, Path(HydraConfig.get().runtime.output_dir))
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
    merged = cfg.copy()
    for key in (
        "env",
        "policy",
        "rollout",
    ):  # replaced whole: a merge would type-check env=webshop against gridworld's schema
        if key in trained:
            merged[key] = trained[key]
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
    "replay": (replay, "compare estimators on a run's recorded batches: advantages, gradient SNR and cosine"),
    "eval-credit": (eval_credit, "precision / recall / F1 of a judge's subgoal labels on annotated demonstrations"),
}

USAGE = (
    "usage: calmrl <command> [hydra overrides...]\n\ncommands:\n"
    + "\n".join(f"  {name:<13}{help_}" for name, (_, help_) in COMMANDS.items())
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
    # Hydra prints a composition error (unknown option, wrong type, bad override syntax) over several lines
    # and exits 1. Let it raise instead, and report it as one `calmrl: error:` line with exit code 2 like
    # every other input error; HYDRA_FULL_ERROR=1 set by the user still gets the full trace.
    import os
    import warnings

    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    # conf/hydra/launcher/submitit_local.yaml shares its name with the submitit plugin's schema on purpose (Hydra
    # checks the file against it); Hydra 1.3 still does that check but warns it is deprecated on every run.
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/submitit_local' is validated against ConfigStore")
    _quiet_submitit_sacct()
    wants_trace = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        entry()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as exc:
        if wants_trace:
            raise
        _fail(_one_line(exc))


class _SacctOnce(logging.Filter):
    """Without SLURM accounting (no slurmdbd) every poll of submitit's job watcher fails its `sacct` call and warns
    "Bypassing sacct error": keep the first one, with what it means, and drop the repeats. submitit then sees a
    job end only by the result file it writes (docs/scaling.md: a job killed before writing one is never seen)."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.seen:
            return False
        self.seen = True
        record.msg = f"{record.getMessage()} (SLURM accounting looks off; said once, not at every poll)"
        record.args = ()
        return True


def _quiet_submitit_sacct() -> None:
    logging.getLogger("submitit").addFilter(_SacctOnce())


def _one_line(exc: BaseException) -> str:
    """Hydra's multi-line message (and OmegaConf's reason, its cause) as one line; listed options comma-joined."""
    text = str(exc).split("Config search path:")[0]
    if getattr(exc, "override", None):  # a parse error names the input, not the override it came from
        text = f"cannot parse override {exc.override!r}\n{text}"
    if exc.__cause__ is not None and str(exc.__cause__).strip():
        text += "\n" + str(exc.__cause__).strip().splitlines()[0]  # the reason, without full_key/object_type
    parts: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t") and parts:  # an option Hydra lists, one per line
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line.strip()
        elif line.strip():
            parts.append(line.strip().rstrip("."))
    return "; ".join(parts)


if __name__ == "__main__":
    main()
