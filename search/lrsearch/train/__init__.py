"""Training: the objective interface, the loop, the fast MLP step, per-epoch records."""
