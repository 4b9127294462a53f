"""A tiny classification objective for fast tests: 10 Gaussian clusters in 20 dimensions, a small MLP.

Used by tests as `synthetic_objective:Synthetic` (the tests folder is on the import path).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from lrsearch.train.objective import Objective, TrainingData


class Synthetic(Objective):
    fast_mlp_step = True

    def __init__(self, *, samples: int = 2000, batch_size: int = 64, noise: float = 2.0):
        self.samples, self.batch_size, self.noise = samples, batch_size, noise

    def make_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 10))

    def load_data(self, device: torch.device, data_dir: Path | None) -> TrainingData:
        generator = torch.Generator().manual_seed(1234)
        centres = torch.randn(10, 20, generator=generator) * 1.5

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = torch.randint(0, 10, (n,), generator=generator)
            points = centres[labels] + self.noise * torch.randn(n, 20, generator=generator)
            return points.to(device), labels.to(device)

        train_x, train_y = draw(self.samples)
        val_x, val_y = draw(self.samples // 4)
        return TrainingData(train_x, train_y, val_x, val_y)


class SlowSynthetic(Synthetic):
    """Synthetic whose every training step takes at least `step_seconds` longer (a sleep: no CPU is used), for
    tests that must catch a trial half-way however fast the machine trains. Having its own loss, it is trained by
    autograd, not by the hand-derived MLP step."""

    def __init__(self, *, samples: int = 2000, batch_size: int = 64, noise: float = 2.0, step_seconds: float = 0.002):
        super().__init__(samples=samples, batch_size=batch_size, noise=noise)
        self.step_seconds = step_seconds

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        time.sleep(self.step_seconds)
        return super().loss(outputs, targets)


class FailingSynthetic(Synthetic):
    """Synthetic whose model cannot be made in every `fail_every`-th trial of a worker process (1: every trial),
    as a user's objective with a bug fails: a RuntimeError raised in the objective's code."""

    def __init__(self, *, samples: int = 2000, fail_every: int = 1):
        super().__init__(samples=samples)
        self.fail_every, self.models = fail_every, 0

    def make_model(self) -> nn.Module:
        self.models += 1
        if self.models % self.fail_every == 0:
            raise RuntimeError(f"synthetic bug in model {self.models}")
        return super().make_model()


class GreedySynthetic(Synthetic):
    """Synthetic whose first model takes all the memory of the CUDA device and fails with CUDA's out-of-memory
    error, as a model too big for the GPU does; its later models are the usual small ones."""

    def __init__(self, *, samples: int = 2000):
        super().__init__(samples=samples)
        self.models = 0

    def make_model(self) -> nn.Module:
        self.models += 1
        held = []  # referenced by the error's traceback until the worker lets go of it
        while self.models == 1:
            held.append(torch.empty(1 << 30, dtype=torch.uint8, device="cuda"))
        return super().make_model()


class Counted(Synthetic):
    """Synthetic that appends the loading process's id to the file `log` each time its data is loaded."""

    def __init__(self, *, log: str, samples: int = 2000, batch_size: int = 64, noise: float = 2.0):
        super().__init__(samples=samples, batch_size=batch_size, noise=noise)
        self.log = log

    def load_data(self, device: torch.device, data_dir: Path | None) -> TrainingData:
        with open(self.log, "a", encoding="utf-8") as file:
            file.write(f"{os.getpid()}\n")
        return super().load_data(device, data_dir)
