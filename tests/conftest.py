from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST (torchvision layout), named by LRSEARCH_DATA_DIR; CI sets it."""
    folder = os.environ.get("LRSEARCH_DATA_DIR")
    if not folder or not (Path(folder) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip("the real MNIST is not here: set LRSEARCH_DATA_DIR to the folder holding MNIST/raw")
    return Path(folder)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for lrsearch processes started by tests: the synthetic objective importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    return env


def write_study(folder: Path, body: str = "", *, name: str = "synthetic", trials: int = 4, epochs: int = 3) -> Path:
    """A study file on the synthetic objective; `body` adds or replaces tables."""
    path = folder / f"{name}.toml"
    head = f'[study]\nname = "{name}"\ntrials = {trials}\nepochs = {epochs}\n\n'
    if "[objective]" not in body:
        head += '[objective]\nname = "synthetic_objective:Synthetic"\n\n'
    path.write_text(head + body, encoding="utf-8")
    return path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


sys.path.insert(0, str(TESTS))
# Processes started by tests find `lrsearch` (and pip) of this interpreter, whether or not the venv is activated.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
