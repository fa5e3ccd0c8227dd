"""Researcher tools behind the CLI commands other than `train` (eval, ...)."""
