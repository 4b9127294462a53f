from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lrsearch.errors import DataError, ObjectiveError
from lrsearch.train.objective import load_objective
from lrsearch_objectives.mnist_mlp import MNIST_FILES, MnistMLP, resolve_root


def test_registered_and_module_attr_objectives_load() -> None:
    assert isinstance(load_objective("mnist_mlp", {}), MnistMLP)
    assert load_objective("synthetic_objective:Synthetic", {"samples": 100}).samples == 100  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mnist_cnn", {}, "unknown objective 'mnist_cnn'; registered: mnist_mlp"),
        ("no_such_module_xyz:Thing", {}, "cannot import module 'no_such_module_xyz'"),
        ("synthetic_objective:Missing", {}, "module 'synthetic_objective' has no callable 'Missing'"),
        ("synthetic_objective:", {}, "write it as module:attr"),
        ("mnist_mlp", {"hidden": 64}, "does not accept these [objective] options"),
        ("mnist_mlp", {"validation": "train"}, "could not be created: ValueError: validation must be"),
        ("collections:OrderedDict", {}, "lacks the objective interface: no method load_data()"),
    ],
)
def test_objective_errors_say_what_is_wrong(name: str, options: dict, message: str) -> None:
    with pytest.raises(ObjectiveError) as error:
        load_objective(name, options)
    assert message in str(error.value)


def test_mnist_is_read_once_scaled_to_unit_range(mnist_dir: Path) -> None:
    data = MnistMLP().load_data(torch.device("cpu"), mnist_dir)
    assert data.train_inputs.shape == (60_000, 784) and data.val_inputs.shape == (10_000, 784)
    assert data.train_inputs.dtype == torch.float32
    assert float(data.train_inputs.min()) == 0.0 and float(data.train_inputs.max()) == 1.0
    assert data.train_inputs.mean().item() == pytest.approx(0.1307, abs=1e-4)  # MNIST's known pixel mean
    holdout = MnistMLP(validation="holdout", train_samples=1000).load_data(torch.device("cpu"), mnist_dir)
    assert len(holdout.train_targets) == 1000 and len(holdout.val_targets) == 10_000
    assert torch.equal(holdout.val_inputs, data.train_inputs[-10_000:])


def test_the_data_folder_may_be_the_raw_folder_itself(mnist_dir: Path) -> None:
    assert resolve_root(mnist_dir / "MNIST" / "raw") == mnist_dir
    assert resolve_root(mnist_dir / "MNIST") == mnist_dir
    assert resolve_root(mnist_dir) == mnist_dir


def test_missing_mnist_names_the_folder_and_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        MnistMLP().load_data(torch.device("cpu"), tmp_path / "empty")
    message = str(error.value)
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)


def test_truncated_mnist_is_a_data_error(tmp_path: Path, mnist_dir: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_dir / "MNIST" / "raw" / name, raw / name)
    with open(raw / "train-images-idx3-ubyte", "r+b") as images:
        images.truncate(1_000_000)
    with pytest.raises(DataError, match="cannot read or download MNIST"):
        MnistMLP().load_data(torch.device("cpu"), tmp_path)
