"""Which training loop a config runs, decided in this one place (the CLI, benchmarks and tests all call
`build_trainer`):

- multi-agent algos (gmah, ippo) on a tensor grid env: small networks, their own loop (calmrl/multiagent);
- preference algos (dpo, dpo_treg): offline on a data set, no rollouts (calmrl/preference.py);
- `cluster=ray`: the RL loop with rollouts and updates sent to Ray actors (calmrl/cluster/trainer.py);
- otherwise the RL loop in one process (calmrl/trainer.py).

Kept apart from the loops themselves so none of them imports another's module."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def build_trainer(cfg: DictConfig, run_dir: Path):
    """The loop for `cfg`, set up in `run_dir` (config checked, policy loaded, resume point found); `.run()`
    trains it."""
    from calmrl.multiagent import MULTIAGENT_ALGOS

    if cfg.algo.name in MULTIAGENT_ALGOS:
        from calmrl.multiagent.trainer import MultiAgentTrainer

        return MultiAgentTrainer(cfg, run_dir)
    from calmrl.algos import ALGOS

    if ALGOS.get(cfg.algo.name).offline:
        from calmrl.preference import PreferenceTrainer

        return PreferenceTrainer(cfg, run_dir)
    if cfg.cluster.name == "ray":
        from calmrl.cluster.trainer import RayTrainer

        return RayTrainer(cfg, run_dir)
    from calmrl.trainer import Trainer

    return Trainer(cfg, run_dir)
