"""Environment settings through the real CLI: read at first use (never at import), a bad value one clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_study
from lrsearch import settings
from lrsearch.errors import ConfigError

BAD = [
    ("LRSEARCH_HEARTBEAT_INTERVAL", "20s", "a whole number of 1 or more, default 20"),
    ("LRSEARCH_HEARTBEAT_INTERVAL", "0", "a whole number of 1 or more"),
    ("LRSEARCH_HEARTBEAT_GRACE", "-1", "a whole number of 1 or more, default 120"),
    ("LRSEARCH_STORAGE_RETRY_SECONDS", "abc", "a number of 0.0 or more, default 300.0"),
    ("LRSEARCH_STORAGE_RETRY_SECONDS", "nan", "a number of 0.0 or more"),
    ("LRSEARCH_PROGRESS_INTERVAL", "soon", "a number of 0.0 or more, default 30.0"),
    ("LRSEARCH_TORCH_THREADS", "0", "a whole number of 1 or more"),
]


def lrsearch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "lrsearch", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize(("name", "value", "accepted"), BAD)
def test_a_bad_value_names_the_variable_its_value_and_what_is_accepted(
    name: str, value: str, accepted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        settings.check_all()
    assert str(refused.value).startswith(f"environment variable {name}={value!r}: give {accepted}")


@pytest.mark.parametrize(("name", "value", "accepted"), [BAD[0], BAD[2], BAD[-1]])
def test_a_bad_setting_is_one_clear_error_and_help_still_works(
    name: str, value: str, accepted: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    env = dict(subprocess_env, **{name: value})
    for help_args in (["--help"], ["best", "--help"], ["start", "--help"]):
        shown = lrsearch(env, *help_args)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr

    study = write_study(tmp_path, trials=1, epochs=1)
    database = tmp_path / "study.db"
    for args in (["start", str(study)], ["start", str(study), "--dry-run"], ["worker"]):
        refused = lrsearch(env, *args, "--storage", f"sqlite:///{database}")
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr
        [line] = [line for line in refused.stderr.splitlines() if line.startswith("Error: ")]
        assert f"environment variable {name}={value!r}: give {accepted}" in line
        assert not database.exists()  # refused before the database was touched


def test_settings_are_read_when_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRSEARCH_HEARTBEAT_GRACE", raising=False)
    assert settings.heartbeat_grace() == 120
    monkeypatch.setenv("LRSEARCH_HEARTBEAT_GRACE", " 7 ")
    assert settings.heartbeat_grace() == 7
    monkeypatch.setenv("LRSEARCH_HEARTBEAT_GRACE", "")
    assert settings.heartbeat_grace() == 120  # empty: the default
    monkeypatch.setenv("LRSEARCH_STORAGE_RETRY_SECONDS", "2.5")
    assert settings.storage_retry_seconds() == 2.5
    monkeypatch.delenv("LRSEARCH_TORCH_THREADS", raising=False)
    assert settings.torch_threads() is None
    monkeypatch.setenv("LRSEARCH_HEARTBEAT_GRACE", "1.5")
    with pytest.raises(ConfigError, match=r"LRSEARCH_HEARTBEAT_GRACE='1.5': give a whole number of 1 or more"):
        settings.check_all()
