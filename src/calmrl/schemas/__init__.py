"""Config schemas by group, each a small module that imports no torch (so a config error shows in under a
second). `calmrl.config` registers them with Hydra and holds the cross-group checks; groups move here one by one
(issue 17): so far the enums several groups share and the judge (`env.judge`, `shaper.judge`)."""
