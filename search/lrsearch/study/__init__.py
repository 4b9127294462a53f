"""A study: its definition, targets and scoring, pruning, its lifecycle, the trial runner."""
