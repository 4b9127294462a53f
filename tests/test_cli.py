from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_study
from lrsearch.cli import main

FEASIBLE = """
[targets]
min_val = 0.2
max_train = 1.0

[space]
optimizers = ["sgd"]
schedulers = ["constant", "cosine"]
lr = [0.02, 0.1]
"""


def lrsearch(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    # one worker, in this process: the synthetic objective imports here, not in worker processes
    result = CliRunner().invoke(main, list(args), env={"LRSEARCH_WORKERS": "1", **(env or {})}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def trial_states(url: str) -> list[str]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return [row[0] for row in db.execute("SELECT state FROM trials ORDER BY number")]


def test_start_then_best_trials_studies(tmp_path: Path, sqlite_url: str) -> None:
    study = write_study(tmp_path, FEASIBLE, trials=3)
    code, out, err = lrsearch("start", str(study), "--storage", sqlite_url)
    assert code == 0, err
    assert "[3/3]" in err and out == ""  # progress goes to stderr, nothing to stdout
    assert trial_states(sqlite_url) == ["COMPLETE"] * 3

    code, out, _ = lrsearch("best", "--storage", sqlite_url)
    assert code == 0
    assert "Best feasible strategy of study 'synthetic'" in out
    assert "train loss" in out and "<- best feasible" in out
    assert "optimizer = torch.optim.SGD(model.parameters(), lr=" in out

    code, out, _ = lrsearch("best", "--storage", sqlite_url, "--json")
    summary = json.loads(out)
    assert summary["val_acc"] >= 0.2 and summary["epochs_to_train"] >= 1 and "torch.optim" in summary["code"]

    code, out, _ = lrsearch("trials", "--storage", sqlite_url, "--json")
    rows = json.loads(out)
    assert [r["number"] for r in rows] == [0, 1, 2] and {r["optimizer"] for r in rows} == {"sgd"}
    code, out, _ = lrsearch("trials", "--storage", sqlite_url)
    assert len(out.splitlines()) == 4 and "complete" in out

    code, out, _ = lrsearch("studies", "--storage", sqlite_url, "--json")
    assert json.loads(out)[0] | {"best_val_acc": None} == {
        "name": "synthetic",
        "trials": 3,
        "finished": 3,
        "best_val_acc": None,
        "best_trial": summary["trial"],
    }


def test_trials_is_the_total_and_start_resumes(tmp_path: Path, sqlite_url: str) -> None:
    study = write_study(tmp_path, FEASIBLE, trials=2)
    assert lrsearch("start", str(study), "--storage", sqlite_url)[0] == 0
    code, _, err = lrsearch("start", "--study-name", "synthetic", "--trials", "5", "--storage", sqlite_url)
    assert code == 0, err
    assert len(trial_states(sqlite_url)) == 5
    code, _, err = lrsearch("start", str(study), "--trials", "5", "--storage", sqlite_url)
    assert code == 0 and len(trial_states(sqlite_url)) == 5  # nothing left to run


def test_storage_comes_from_the_environment(tmp_path: Path, sqlite_url: str) -> None:
    study = write_study(tmp_path, FEASIBLE, trials=1)
    assert lrsearch("start", str(study), env={"LRSEARCH_STORAGE": sqlite_url})[0] == 0
    assert trial_states(sqlite_url) == ["COMPLETE"]


def test_a_conflicting_definition_is_refused(tmp_path: Path, sqlite_url: str) -> None:
    study = write_study(tmp_path, FEASIBLE, trials=1)
    assert lrsearch("start", str(study), "--storage", sqlite_url)[0] == 0
    code, _, err = lrsearch("start", str(study), "--epochs", "7", "--min-val", "0.5", "--storage", sqlite_url)
    assert code == 2
    assert "study 'synthetic' already exists with a different definition" in err
    assert "study.epochs" in err and "targets.min_val" in err and "Traceback" not in err
    assert trial_states(sqlite_url) == ["COMPLETE"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "[study] trials: 0 is not accepted; it must be 1 or more"),
        (["--epochs", "-1"], "[study] epochs: -1 is not accepted"),
        (["--sampler", "grid"], "[sampler] name: 'grid' is not accepted; choose from: tpe, random"),
        (
            ["--pruner", "asha"],
            "[pruner] name: 'asha' is not accepted; choose from: feasible, median, halving",
        ),
        (["--max-train", "1.5"], "[targets] max_train: 1.5 is not accepted; use a value in [0, 1]"),
    ],
)
def test_bad_options_exit_2_and_create_nothing(tmp_path: Path, sqlite_url: str, args: list[str], message: str) -> None:
    study = write_study(tmp_path, FEASIBLE)
    code, _, err = lrsearch("start", str(study), *args, "--storage", sqlite_url)
    assert code == 2 and message in err and "Traceback" not in err
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # not even an empty database


def test_bad_study_file_exit_2(tmp_path: Path, sqlite_url: str) -> None:
    study = write_study(tmp_path, '[space]\nschedulers = ["cosin"]\n')
    code, _, err = lrsearch("start", str(study), "--storage", sqlite_url)
    assert code == 2
    assert f"{study}: [space] unknown scheduler 'cosin'; choose from: constant, step" in err


def test_read_commands_name_the_missing_study(sqlite_url: str, tmp_path: Path) -> None:
    assert lrsearch("create", str(write_study(tmp_path, FEASIBLE)), "--storage", sqlite_url)[0] == 0
    code, _, err = lrsearch("best", "--study-name", "nope", "--storage", sqlite_url)
    assert code == 2 and "no study named 'nope' in this storage" in err
    code, _, err = lrsearch("trials", "--storage", "mysql+nosuchdriver://u:secret@h/db")
    assert code == 1 and "secret" not in err and "u:***@h" in err


def test_best_without_a_feasible_trial_says_so(tmp_path: Path, sqlite_url: str) -> None:
    study = write_study(tmp_path, FEASIBLE.replace("min_val = 0.2", "min_val = 1.0"), trials=1)
    assert lrsearch("start", str(study), "--storage", sqlite_url)[0] == 0
    code, _, err = lrsearch("best", "--storage", sqlite_url)
    assert code == 1 and "has no feasible trial yet (1 complete)" in err


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from lrsearch.cli import main; sys.argv = ['lrsearch', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "start" in result.stdout and "best" in result.stdout


def test_diverging_trials_end_with_their_reason_and_the_study_goes_on(tmp_path: Path, sqlite_url: str) -> None:
    diverging = FEASIBLE.replace("lr = [0.02, 0.1]", "lr = [50.0, 100.0]").replace("min_val = 0.2", "min_val = 0.99")
    study = write_study(tmp_path, diverging, trials=3, epochs=2)
    code, _, err = lrsearch("start", str(study), "--storage", sqlite_url)
    assert code == 0, err
    assert trial_states(sqlite_url) == ["COMPLETE"] * 3
    rows = json.loads(lrsearch("trials", "--storage", sqlite_url, "--json")[1])
    assert all(row["stop_reason"].startswith("diverged: loss became ") for row in rows)
    assert all(row["feasible"] is False for row in rows)


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ('name = "no_such_module_xyz:Objective"', "cannot import module 'no_such_module_xyz'"),
        ('name = "synthetic_objective:Synthetic"\nsamples = "many"', "could not load its data: TypeError"),
        ('name = "mnist_mlp"', "cannot read or download MNIST in"),
    ],
)
def test_an_objective_or_data_that_does_not_load_creates_no_study(
    tmp_path: Path, sqlite_url: str, objective: str, message: str
) -> None:
    study = write_study(tmp_path, f"[objective]\n{objective}\n" + FEASIBLE)
    code, _, err = lrsearch("start", str(study), "--storage", sqlite_url, "--data-dir", str(tmp_path / "no-data"))
    assert code == 1 and message in err and "Traceback" not in err
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()  # not even an empty database


def test_trials_keeps_its_columns_on_pruned_and_failed_rows(sqlite_url: str) -> None:
    from test_record import load_fixture

    load_fixture(sqlite_url, mixed=True)
    code, out, err = lrsearch("trials", "--storage", sqlite_url, "--study-name", "synthetic")
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["complete", "complete", "pruned", "fail"]
    assert len({len(line) for line in lines}) == 1, "\n" + out
    # the columns: runs of positions that are not blank on every line
    blank = [all(line[k] == " " for line in lines) for k in range(len(lines[0]))]
    columns = sum(1 for k in range(len(blank)) if not blank[k] and (k == 0 or blank[k - 1]))
    assert columns == 9, "\n" + out


@pytest.mark.parametrize("command", ["start", "create"])
def test_pruner_help_lists_every_pruner_and_the_default(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "--pruner [feasible|median|halving|hyperband|none]" in text
    assert "feasible (the default" in text
