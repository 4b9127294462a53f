"""The real thing: the `lrsearch` command on the real MNIST, in its own process."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

STUDY = """
[study]
name = "mnist-e2e"
trials = 3
epochs = 2

[pruner]
name = "none"

[space]
optimizers = ["adam", "adamw"]  # each reaches 0.90 in 2 epochs at these LRs (SGD with little momentum may not)
schedulers = ["constant", "cosine"]
lr = [0.001, 0.003]
"""


def test_a_few_trials_on_the_real_mnist(tmp_path: Path, mnist_dir: Path, subprocess_env: dict[str, str]) -> None:
    (tmp_path / "e2e.toml").write_text(STUDY)
    env = {**subprocess_env, "LRSEARCH_DATA_DIR": str(mnist_dir)}
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    start = subprocess.run(
        ["lrsearch", "start", "e2e.toml", "--storage", url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert start.returncode == 0, start.stderr
    trials = json.loads(
        subprocess.run(
            ["lrsearch", "trials", "--storage", url, "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert [t["state"] for t in trials] == ["complete"] * 3
    assert max(t["val_acc"] for t in trials) >= 0.90  # the exercise's bar, on the genuine data
    best = subprocess.run(["lrsearch", "best", "--storage", url], env=env, capture_output=True, text=True)
    if any(t["feasible"] for t in trials):
        assert best.returncode == 0 and "<- best feasible" in best.stdout
    else:
        assert best.returncode == 1 and "no feasible trial yet" in best.stderr


def test_the_default_study_ships_inside_the_wheel(tmp_path: Path) -> None:
    subprocess.run(
        ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lrsearch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        "lrsearch/studies/mnist.toml",
        "lrsearch/studies/smoke.toml",
        "lrsearch/cli.py",
        "lrsearch_objectives/mnist_mlp.py",
        "lrsearch/py.typed",
    } <= set(names)
    assert not any("MNIST" in n or "ubyte" in n for n in names)
