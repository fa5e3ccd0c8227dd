"""Which training loop a config runs, decided in this one place (the CLI, benchmarks and tests all call
`build_trainer`):

- multi-agent algos (gmah, ippo) on a tensor grid env: small networks, their own loop (calmrl/multiagent);
- preference algos (dpo, dpo_treg): offline on a data set, no rollouts (calmrl/preference.py);
- `cluster=ray`: either loop with its roles on Ray actors (calmrl/cluster/trainer.py): the RL loop's rollouts and
  updates, the preference loop's pair losses;
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

    offline = ALGOS.get(cfg.algo.name).offline
    if cfg.cluster.name == "ray":
        from calmrl.cluster.trainer import RayPreferenceTrainer, RayTrainer

        return (RayPreferenceTrainer if offline else RayTrainer)(cfg, run_dir)
    if offline:
        from calmrl.preference import PreferenceTrainer

        return PreferenceTrainer(cfg, run_dir)
    from calmrl.trainer import Trainer

    return Trainer(cfg, run_dir)
