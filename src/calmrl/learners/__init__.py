"""Learners: policy/critic updates, optimisation and checkpointing."""
