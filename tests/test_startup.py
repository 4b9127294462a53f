"""What `lrsearch start` does before its first epoch: each thing once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from conftest import write_study
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import StudyDefinition, load_study_file
from lrsearch.study.lifecycle import create_or_resume, load, stored_total


@pytest.mark.parametrize(("workers", "loads"), [(1, 1), (2, 3)])
def test_a_new_study_s_data_is_read_once_per_process(
    tmp_path: Path, sqlite_url: str, subprocess_env: dict[str, str], workers: int, loads: int
) -> None:
    # start checks the objective and its data before it creates the study; its own worker uses what the check
    # loaded, and the fleet's parent does not read it again for its workers, each of which reads it once.
    log = tmp_path / "loads.txt"
    objective = f'[objective]\nname = "synthetic_objective:Counted"\nlog = "{log}"\nsamples = 256\n'
    study = write_study(tmp_path, objective, trials=2, epochs=1)
    command = [sys.executable, "-m", "lrsearch", "start", str(study), "--storage", sqlite_url]
    env = dict(subprocess_env, LRSEARCH_ARTIFACT_DIR="off", LRSEARCH_TORCH_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([*command, "--workers", str(workers)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pids = log.read_text(encoding="utf-8").split()
    assert len(pids) == loads and len(set(pids)) == loads, pids


def test_load_opens_the_study_once(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    definition = load_study_file(write_study(tmp_path, '[pruner]\nname = "median"\n'))
    create_or_resume(open_storage(sqlite_url), definition)
    made: list[str] = []
    original = optuna.Study.__init__

    def counting(self: optuna.Study, *args: object, **kwargs: object) -> None:
        made.append(self.__class__.__name__)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(optuna.Study, "__init__", counting)
    study, stored = load(open_storage(sqlite_url), definition.name)
    assert made == ["Study"]
    assert stored == definition
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)


def test_the_stored_definition_is_parsed_once_per_text(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    definition = load_study_file(write_study(tmp_path, name=f"parsed-{tmp_path.name}", trials=4))  # a new text
    study = create_or_resume(open_storage(sqlite_url), definition)
    parsed: list[str] = []
    original = StudyDefinition.from_json

    def counting(text: str, where: str) -> StudyDefinition:
        parsed.append(text)
        return original(text, where)

    monkeypatch.setattr(StudyDefinition, "from_json", staticmethod(counting))
    assert [stored_total(study) for _ in range(5)] == [4] * 5
    assert len(parsed) == 1
    create_or_resume(open_storage(sqlite_url), definition.with_overrides(trials=6))  # start --trials 6
    assert [stored_total(study) for _ in range(3)] == [6] * 3
    assert len(parsed) == 2


def _processes_naming(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:  # it ended meanwhile
            pass
    return found


def test_workers_started_during_the_check_of_a_broken_objective_are_stopped(
    tmp_path: Path, sqlite_url: str, subprocess_env: dict[str, str]
) -> None:
    # With several workers, start starts them while it checks a new study's objective and data; when the check
    # fails no study is made, and those workers end without having touched the database.
    log, name = tmp_path / "loads.txt", f"broken-{tmp_path.name}"
    objective = f'[objective]\nname = "synthetic_objective:Counted"\nlog = "{log}"\nsamples = "many"\n'
    study = write_study(tmp_path, objective, name=name, trials=2, epochs=1)
    command = [sys.executable, "-m", "lrsearch", "start", str(study), "--storage", sqlite_url, "--workers", "2"]
    result = subprocess.run(command, env=subprocess_env, capture_output=True, text=True)
    assert result.returncode != 0 and "could not load its data" in result.stderr, result.stderr
    assert not (tmp_path / "study.db").exists()
    assert len(log.read_text(encoding="utf-8").split()) == 1  # only start's check loaded it
    assert _processes_naming(name) == []
