"""The classic exercise: a 784-128-10 MLP on MNIST, batch 64, pixels scaled to [0, 1] and nothing else.

Copy this file to search LR strategies for your own model: keep the three members (batch_size, load_data,
make_model), point the study file's [objective] name at `your_module:YourClass`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lrsearch.errors import DataError
from lrsearch.train.objective import Objective, TrainingData

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEFAULT_DATA_DIR = Path.home() / ".cache" / "lrsearch" / "data"
HOLDOUT = 10_000


class MnistMLP(Objective):
    """784-128-10 MLP (ReLU), cross-entropy.

    Options (study file [objective]): `validation` is "test" (MNIST's 10k test images, as in the exercise) or
    "holdout" (the last 10k training images; training uses the first 50k); `train_samples` keeps only the first N
    training images (0: all), for quick studies.
    """

    fast_mlp_step = True  # a plain MLP under the default loss: remove this line if you change either

    def __init__(self, *, validation: str = "test", train_samples: int = 0, batch_size: int = 64):
        if validation not in ("test", "holdout"):
            raise ValueError(f"validation must be 'test' or 'holdout', got {validation!r}")
        if train_samples < 0:
            raise ValueError(f"train_samples must be 0 (all) or more, got {train_samples}")
        self.validation, self.train_samples, self.batch_size = validation, train_samples, batch_size

    def make_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(28 * 28, 128), nn.ReLU(), nn.Linear(128, 10))

    def load_data(self, device: torch.device, data_dir: Path | None) -> TrainingData:
        train_x, train_y = read_mnist(data_dir, train=True)
        if self.validation == "holdout":
            val_x, val_y = train_x[-HOLDOUT:], train_y[-HOLDOUT:]
            train_x, train_y = train_x[:-HOLDOUT], train_y[:-HOLDOUT]
        else:
            val_x, val_y = read_mnist(data_dir, train=False)
        if self.train_samples:
            train_x, train_y = train_x[: self.train_samples], train_y[: self.train_samples]
        return TrainingData(
            train_inputs=_pixels(train_x).to(device),
            train_targets=train_y.to(device),
            val_inputs=_pixels(val_x).to(device),
            val_targets=val_y.to(device),
        )


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x 28 x 28 -> float N x 784 in [0, 1]: the exercise's only preprocessing."""
    return images.reshape(len(images), -1).float().div_(255.0)


def read_mnist(data_dir: Path | None, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST images and labels as tensors, read with torchvision (which downloads them when they are absent).

    `data_dir` is torchvision's root (holding MNIST/raw/); a folder that holds the raw files directly works too.
    """
    from torchvision.datasets import MNIST

    root = resolve_root(data_dir)
    try:
        dataset = MNIST(str(root), train=train, download=True)  # skipped when the files are there
    except Exception as e:  # torchvision raises RuntimeError, OSError, ValueError... on missing or broken files
        raise DataError(
            f"cannot read or download MNIST in {root / 'MNIST' / 'raw'} ({type(e).__name__}: {e}). Put the files "
            f"{', '.join(MNIST_FILES)} there (torchvision's layout, as downloaded by torchvision.datasets.MNIST), "
            "or point --data-dir / LRSEARCH_DATA_DIR at the folder that holds MNIST/raw/"
        ) from e
    images, labels = dataset.data, dataset.targets
    expected = 60_000 if train else 10_000
    if images.shape != (expected, 28, 28) or labels.shape != (expected,):
        raise DataError(
            f"MNIST in {root / 'MNIST' / 'raw'} has images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)}; expected ({expected}, 28, 28) and ({expected},): the files are "
            "truncated or not MNIST; replace them"
        )
    return images, labels


def resolve_root(data_dir: Path | None) -> Path:
    if data_dir is None:
        return DEFAULT_DATA_DIR
    data_dir = Path(data_dir).expanduser()
    if (data_dir / MNIST_FILES[0]).exists() and data_dir.name == "raw" and data_dir.parent.name == "MNIST":
        return data_dir.parent.parent  # pointed at MNIST/raw itself
    if (data_dir / "raw" / MNIST_FILES[0]).exists() and data_dir.name == "MNIST":
        return data_dir.parent
    return data_dir
