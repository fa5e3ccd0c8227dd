"""Config schemas by group, each a small module that imports no torch (so a config error shows in under a
second), with ranges next to the fields (`bounds.bounded`): env, policy, shaper, algo, rollout, learner, cluster,
logger, decode, the shared judge, and each command's top level (`run`). `calmrl.config` registers them with Hydra
and holds the cross-group checks."""
