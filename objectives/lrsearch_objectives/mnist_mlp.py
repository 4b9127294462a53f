"""The classic exercise: a 784-128-10 MLP on MNIST, batch 64, pixels scaled to [0, 1] and nothing else.

Copy this file to search LR strategies for your own model: keep the three members (batch_size, load_data,
make_model), point the study file's [objective] name at `your_module:YourClass`.
"""

from __future__ import annotations

import math
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
    """MNIST images and labels as tensors, from torchvision's layout (`MNIST/raw/` under `data_dir`).

    Files that are there are read directly (importing torchvision costs more than reading them); when they are
    absent torchvision downloads them. `data_dir` is torchvision's root (holding MNIST/raw/); a folder that holds
    the raw files directly works too.
    """
    root = resolve_root(data_dir)
    raw = root / "MNIST" / "raw"
    prefix = "train" if train else "t10k"
    paths = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    try:
        if not all(path.is_file() for path in paths):
            _download(root, train=train)
        images, labels = _read_idx(paths[0], dims=3), _read_idx(paths[1], dims=1)
    except Exception as e:  # torchvision raises RuntimeError, OSError, ValueError... on missing or broken files
        raise DataError(
            f"cannot read or download MNIST in {raw} ({type(e).__name__}: {e}). Put the files "
            f"{', '.join(MNIST_FILES)} there (torchvision's layout, as downloaded by torchvision.datasets.MNIST), "
            "or point --data-dir / LRSEARCH_DATA_DIR at the folder that holds MNIST/raw/"
        ) from e
    expected = 60_000 if train else 10_000
    if images.shape != (expected, 28, 28) or labels.shape != (expected,):
        raise DataError(
            f"MNIST in {raw} has images {tuple(images.shape)} and labels "
            f"{tuple(labels.shape)}; expected ({expected}, 28, 28) and ({expected},): the files are "
            "truncated or not MNIST; replace them"
        )
    return images, labels.long()


def _download(root: Path, *, train: bool) -> None:
    from torchvision.datasets import MNIST

    MNIST(str(root), train=train, download=True)


def _read_idx(path: Path, *, dims: int) -> torch.Tensor:
    """An IDX file of unsigned bytes (MNIST's format): a 4-byte magic number (0, 0, 8, dims), the dims' sizes as
    big-endian 32-bit integers, then the data."""
    data = path.read_bytes()
    header = 4 + 4 * dims
    if len(data) < header or data[:4] != bytes((0, 0, 8, dims)):
        raise ValueError(f"{path.name} is not an IDX file of {dims}-dimensional unsigned bytes")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    if len(data) != header + math.prod(shape):
        raise ValueError(f"{path.name} holds {len(data) - header} bytes of data; its header promises {shape}")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(shape)


def resolve_root(data_dir: Path | None) -> Path:
    if data_dir is None:
        return DEFAULT_DATA_DIR
    data_dir = Path(data_dir).expanduser()
    if (data_dir / MNIST_FILES[0]).exists() and data_dir.name == "raw" and data_dir.parent.name == "MNIST":
        return data_dir.parent.parent  # pointed at MNIST/raw itself
    if (data_dir / "raw" / MNIST_FILES[0]).exists() and data_dir.name == "MNIST":
        return data_dir.parent
    return data_dir
