"""Every input a user can get wrong, through the real CLI: one message line that names the input, what is wrong and
what to do; exit code 2 for bad input (options, study files, URLs, names), 1 for the rest; no traceback; and the
database exactly as it was: the same studies, trials and file bytes, and no new file (a new SQLite database is not
even created). Each case is a row of the README's "Bad input and outages" table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import lrsearch.fleet.supervisor
import lrsearch.store.storage
from conftest import REPO, TESTS, write_study
from lrsearch.cli import main
from test_cli import FEASIBLE

# The existing study every case runs against (the study file given to `start` is this one, unchanged).
STUDY = FEASIBLE
PASSWORD = "secret"
UNREACHABLE = f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:1/test"  # nothing listens on port 1
NEEDS_PSYCOPG2 = pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="psycopg2 is not installed")


@dataclass(frozen=True)
class Case:
    """A command line ({study}, {db}, {new}, {tmp}, {file}, {silent} filled in) and what the user must see."""

    id: str
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # each in the one "Error: ..." line: the input, what is wrong, what to do
    file: str = ""  # the content of {file}, a study file
    gpus: int = 0  # CUDA devices torch reports (faked)


def case(id: str, *args: str, code: int, says: tuple[str, ...], **kwargs: object) -> object:
    marks = [NEEDS_PSYCOPG2] if any("psycopg2" in a or "{silent}" in a for a in args) else []
    return pytest.param(Case(id, args, code, says, **kwargs), id=id, marks=marks)  # type: ignore[arg-type]


START = ("start", "{study}", "--storage", "{db}")
FRESH = '[study]\nname = "fresh"\ntrials = 2\nepochs = 1\n'  # a new study in the same database
CASES = [
    # study files
    case("file-missing", "start", "{tmp}/nope.toml", "--storage", "{db}", code=2,
         says=("nope.toml: study file not found", "give an existing .toml file")),
    case("file-not-toml", "start", "{file}", "--storage", "{db}", file="[study\nname = 1\n", code=2,
         says=("bad.toml: not valid TOML", "line 1")),
    case("file-unknown-key", "start", "{file}", "--storage", "{db}", file="[study]\ntrial = 3\n", code=2,
         says=("bad.toml: [study] unknown key 'trial'", "accepted: name, trials, epochs, seed")),
    case("file-wrong-type", "start", "{file}", "--storage", "{db}", file="[study]\ntrials = '10'\n", code=2,
         says=("bad.toml: [study] trials must be a whole number, got '10'",)),
    case("file-low-above-high", "start", "{file}", "--storage", "{db}", file="[space]\nlr = [0.5, 0.01]\n", code=2,
         says=("bad.toml: [space] lr", "0.5", "0.01")),
    case("file-unknown-optimizer", "start", "{file}", "--storage", "{db}", file="[space]\noptimizers = ['adamx']\n",
         code=2, says=("bad.toml: [space] unknown optimizer 'adamx'", "choose from: sgd, adam")),
    case("file-unknown-family", "start", "{file}", "--storage", "{db}", file="[space]\nschedulers = ['cosin']\n",
         code=2, says=("bad.toml: [space] unknown scheduler 'cosin'", "choose from: constant, step")),
    case("file-unknown-sampler", "start", "{file}", "--storage", "{db}", file="[sampler]\nname = 'grid'\n", code=2,
         says=("bad.toml: [sampler] name: 'grid' is not accepted", "choose from: tpe, random")),
    case("file-unknown-pruner", "start", "{file}", "--storage", "{db}", file="[pruner]\nname = 'asha'\n", code=2,
         says=("bad.toml: [pruner] name: 'asha' is not accepted", "choose from: feasible, median")),
    # options
    case("trials-0", *START, "--trials", "0", code=2, says=("[study] trials: 0 is not accepted", "1 or more")),
    case("trials-negative", *START, "--trials", "-3", code=2, says=("[study] trials: -3 is not accepted", "1 or more")),
    case("trials-not-a-number", *START, "--trials", "ten", code=2, says=("'--trials'", "'ten' is not a valid integer")),
    case("epochs-0", *START, "--epochs", "0", code=2, says=("[study] epochs: 0 is not accepted", "1 or more")),
    case("create-epochs-0", "create", "{study}", "--storage", "{new}", "--epochs", "0", code=2,
         says=("[study] epochs: 0 is not accepted", "1 or more")),
    case("sampler-option", *START, "--sampler", "grid", code=2, says=("[sampler] name: 'grid'", "choose from: tpe")),
    case("pruner-option", *START, "--pruner", "asha", code=2, says=("[pruner] name: 'asha'", "choose from: feasible")),
    case("max-train-option", *START, "--max-train", "1.5", code=2,
         says=("[targets] max_train: 1.5 is not accepted", "use a value in [0, 1]")),
    case("workers-0", *START, "--workers", "0", code=2, says=("--workers '0'", "1 or more) or auto")),
    case("workers-not-a-number", *START, "--workers", "abc", code=2, says=("--workers 'abc'", "1 or more) or auto")),
    case("per-gpu-without-gpus", *START, "--per-gpu", "2", code=2,
         says=("--per-gpu needs --gpus", "e.g. --gpus 0,1 --per-gpu 2")),
    case("per-gpu-0", *START, "--gpus", "0", "--per-gpu", "0", gpus=2, code=2,
         says=("--per-gpu 0", "1 or more workers per GPU")),
    case("gpu-not-there", *START, "--gpus", "0,7", gpus=2, code=2, says=("--gpus: no GPU 7 on this host", "it has 2")),
    case("gpus-without-cuda", *START, "--gpus", "0", code=2,
         says=("--gpus 0: this host has no CUDA device", "leave out --gpus to run on the CPU")),
    case("gpus-not-ids", *START, "--gpus", "0,x", gpus=2, code=2, says=("--gpus '0,x'", "e.g. --gpus 0,1,2,3")),
    case("device-not-there", *START, "--device", "cuda:3", code=2,
         says=("--device cuda:3: torch sees", "or use --device cpu")),
    case("device-unknown", *START, "--device", "gpu", code=2, says=("--device 'gpu'", "use auto, cpu, cuda or cuda:N")),
    case("worker-threads-0", "worker", "--storage", "{db}", "--threads", "0", code=2, says=("'--threads'", ">=1")),
    case("dashboard-port", "dashboard", "--storage", "{db}", "--port", "70000", code=2,
         says=("'--port'", "1<=x<=65535")),
    # storage URLs
    case("url-malformed", *START[:3], "sqlite:/x", code=2, says=("storage URL 'sqlite:/x'", "use e.g. sqlite:///")),
    case("url-not-a-url", "best", "--storage", "notaurl", code=2, says=("storage URL 'notaurl'", "use e.g. sqlite:///")),
    case("url-bad-port", "trials", "--storage", f"postgresql://u:{PASSWORD}@host:notaport/db", code=2,
         says=("'postgresql://u:***@host:notaport/db': its port is not a number", "use e.g.")),
    case("url-folder-missing", *START[:3], "sqlite:///{tmp}/no/such/folder/x.db", code=2,
         says=("folder", "no/such/folder does not exist", "create it or fix the path")),
    case("dry-run-url-folder-missing", "start", "{study}", "--dry-run", "--storage", "sqlite:///{tmp}/no/x.db", code=2,
         says=("folder", "no does not exist", "create it or fix the path")),
    case("driver-not-installed", *START[:3], f"mysql+mysqldb://u:{PASSWORD}@localhost/db", code=1,
         says=("'mysql+mysqldb://u:***@localhost/db'", "driver 'mysqldb' is not installed", "install it")),
    case("server-unreachable-start", *START[:3], UNREACHABLE, code=1,
         says=("cannot open storage 'postgresql+psycopg2://postgres:***@127.0.0.1:1/test'", "Connection refused",
               "check that the database server runs")),
    case("server-unreachable-best", "best", "--storage", UNREACHABLE, code=1,
         says=("postgres:***@127.0.0.1:1/test", "Connection refused", "check that the database server runs")),
    case("server-silent", "studies", "--storage", "{silent}", code=1,
         says=("cannot open storage", "timeout expired", "check that the database server runs")),
    case("server-unreachable-worker", "worker", "--study-name", "synthetic", "--storage", UNREACHABLE, code=4,
         says=("stayed unreachable for 1s", "Connection refused", "start the worker again")),
    # database files and study names that are not there
    *[
        case(f"{command}-database-missing", command, "--storage", "{new}", *extra, code=2,
             says=("the database file", "new.db does not exist", "check --storage (or LRSEARCH_STORAGE)"))
        for command, extra in [
            ("best", ()), ("trials", ()), ("studies", ()), ("report", ()), ("dashboard", ()),
            ("worker", ("--study-name", "synthetic")),
        ]
    ],
    *[
        case(f"{command}-study-missing", command, "--study-name", "nope", "--storage", "{db}", code=2,
             says=("no study named 'nope' in this storage", "studies there: synthetic"))
        for command in ["best", "trials", "report", "worker"]
    ],
    # objectives and data
    case("objective-not-importable", "start", "{file}", "--storage", "{db}", code=1,
         file=FRESH + '[objective]\nname = "no_such_module_xyz:Objective"\n',
         says=("objective 'no_such_module_xyz:Objective': cannot import module 'no_such_module_xyz'",)),
    case("objective-no-interface", "start", "{file}", "--storage", "{new}", code=1,
         file=FRESH + '[objective]\nname = "collections:OrderedDict"\n',
         says=("objective 'collections:OrderedDict' lacks the objective interface", "subclass lrsearch.Objective")),
    case("objective-options", "create", "{file}", "--storage", "{new}", code=1,
         file=FRESH + '[objective]\nname = "synthetic_objective:Synthetic"\nsample = 5\n',
         says=("objective 'synthetic_objective:Synthetic' does not accept these [objective] options",
               "accepted: samples")),
    case("data-dir-unusable", "start", "{file}", "--storage", "{new}", "--data-dir", "{tmp}/bad.toml/data", code=1,
         file=FRESH + '[objective]\nname = "mnist_mlp"\n',
         says=("cannot read or download MNIST in", "point --data-dir / LRSEARCH_DATA_DIR at the folder")),
    # a stored definition that differs
    case("definition-conflict", *START, "--epochs", "7", "--min-val", "0.5", code=2,
         says=("study 'synthetic' already exists with a different definition",
               "differs in: study.epochs, targets.min_val", "or start a new study with --study-name")),
    case("create-definition-conflict", "create", "{study}", "--storage", "{db}", "--seed", "5", code=2,
         says=("study 'synthetic' already exists with a different definition", "differs in: study.seed")),
]  # fmt: skip


# --- the database as it was --------------------------------------------------------------------------


def snapshot(db: Path) -> tuple[str, list[object]]:
    """The file's bytes (sha256, after folding the WAL in) and every row of every table."""
    with sqlite3.connect(db) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = [(t, sorted(map(repr, connection.execute(f'SELECT * FROM "{t}"')))) for t in sorted(tables)]
    connection.close()
    return hashlib.sha256(db.read_bytes()).hexdigest(), rows


def files(folder: Path) -> set[str]:
    """The files in `folder` (SQLite's -wal/-shm companions of an open database aside)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm"))}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding study 'synthetic' with 3 finished trials, made once and copied for each test."""
    folder = tmp_path_factory.mktemp("template")
    study = write_study(folder, STUDY, trials=3, epochs=2)
    result = CliRunner().invoke(
        main, ["start", str(study), "--storage", f"sqlite:///{folder / 'study.db'}"], env={"LRSEARCH_WORKERS": "1"}
    )
    assert result.exit_code == 0, result.output
    snapshot(folder / "study.db")  # WAL folded into the file, which is then complete on its own
    return folder / "study.db"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A PostgreSQL URL whose server accepts the connection and never answers (a hung or firewalled host)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"postgresql+psycopg2://postgres:{PASSWORD}@127.0.0.1:{listener.getsockname()[1]}/test"


@pytest.fixture(autouse=True)
def _fast_and_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lrsearch.store.storage, "CONNECT_TIMEOUT", 1)  # psycopg2 waits at least 2 s
    monkeypatch.setenv("LRSEARCH_STORAGE_RETRY_SECONDS", "1")
    monkeypatch.setattr(lrsearch.fleet.supervisor, "cuda_device_count", lambda: 0)

    def no_serving(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused dashboard must not serve")

    monkeypatch.setattr("optuna_dashboard.run_server", no_serving)


def run(*args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    result = CliRunner().invoke(main, list(args), env={"LRSEARCH_WORKERS": "1"}, catch_exceptions=False)
    return result.exit_code, result.stderr + result.stdout, time.monotonic() - started


def error_line(output: str) -> str:
    [line] = [line for line in output.splitlines() if line.startswith("Error: ")]
    return line


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_a_message_and_changes_nothing(
    bad: Case, template: Path, tmp_path: Path, silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bad.id == "device-not-there" and torch.cuda.device_count() > 3:
        pytest.skip("this host has a GPU 3")
    if bad.id == "driver-not-installed" and importlib.util.find_spec("MySQLdb") is not None:
        pytest.skip("MySQLdb is installed here")
    monkeypatch.setattr(lrsearch.fleet.supervisor, "cuda_device_count", lambda: bad.gpus)
    db = tmp_path / "study.db"
    shutil.copy(template, db)
    study = write_study(tmp_path, STUDY, trials=3, epochs=2)
    if bad.file:
        (tmp_path / "bad.toml").write_text(bad.file, encoding="utf-8")
    places = {
        "study": str(study),
        "db": f"sqlite:///{db}",
        "new": f"sqlite:///{tmp_path / 'new.db'}",
        "tmp": str(tmp_path),
        "file": str(tmp_path / "bad.toml"),
        "silent": silent_server,
    }
    before, listing = snapshot(db), files(tmp_path)

    code, output, seconds = run(*(arg.format(**places) for arg in bad.args))

    assert code == bad.code, output
    line = error_line(output)
    assert all(part in line for part in bad.says), line
    assert "Traceback" not in output and PASSWORD not in output
    assert seconds < 15, f"took {seconds:.0f}s to refuse"
    assert files(tmp_path) == listing  # no new database, no lock file, no report folder
    assert snapshot(db) == before


def test_truncated_mnist_is_refused_before_a_study_is_made(tmp_path: Path, mnist_dir: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    shutil.copytree(mnist_dir / "MNIST" / "raw", raw)
    with open(raw / "train-images-idx3-ubyte", "r+b") as images:
        images.truncate(1_000_000)
    study = tmp_path / "mnist.toml"
    study.write_text('[study]\nname = "m"\n[objective]\nname = "mnist_mlp"\n', encoding="utf-8")
    listing = files(tmp_path)
    new = f"sqlite:///{tmp_path / 'new.db'}"
    code, output, _ = run("start", str(study), "--storage", new, "--data-dir", str(tmp_path / "data"))
    assert code == 1, output
    line = error_line(output)
    assert f"cannot read or download MNIST in {raw}" in line and "point --data-dir" in line, line
    assert "Traceback" not in output and files(tmp_path) == listing


def test_the_check_sees_a_change(template: Path, tmp_path: Path) -> None:
    """The snapshot above is not blind: a study written to the database changes it."""
    db = tmp_path / "study.db"
    shutil.copy(template, db)
    before = snapshot(db)
    study = write_study(tmp_path, STUDY, name="other")
    assert run("create", str(study), "--storage", f"sqlite:///{db}")[0] == 0
    assert snapshot(db) != before


def test_dry_run_prints_the_plan_and_writes_nothing(template: Path, tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    shutil.copy(template, db)
    study = write_study(tmp_path, STUDY, trials=3, epochs=2)
    before, listing = snapshot(db), files(tmp_path)
    code, output, _ = run("start", str(study), "--storage", f"sqlite:///{db}", "--trials", "9", "--dry-run")
    assert code == 0, output
    assert "Study 'synthetic' in sqlite:///" in output and "exists, 3 of its trials finished" in output
    assert "\n9 trials of 2 epochs, objective synthetic_objective:Synthetic\n1 worker: worker 0 on cpu" in output
    assert json.loads(output.split("every default written out):\n")[1])["study"]["trials"] == 9
    code, output, _ = run("start", str(study), "--storage", f"sqlite:///{tmp_path / 'new.db'}", "--dry-run")
    assert code == 0 and "new, start would create it" in output, output
    assert files(tmp_path) == listing and snapshot(db) == before


# --- any command line: a plan or a one-line error, never anything else (hypothesis) --------------------------

garbage = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=6)
numbers = st.integers(-3, 300).map(str) | st.floats(allow_nan=True, allow_infinity=True).map(str)


def values(*plausible: str) -> st.SearchStrategy[str]:
    """Mostly plausible values (valid ones and the usual mistakes), sometimes any number or text."""
    return st.one_of(*[st.sampled_from(plausible)] * 4, numbers, garbage)


DEFINITION_OPTIONS = {
    "--trials": values("1", "3", "10", "0", "-3"),
    "--epochs": values("1", "2", "0"),
    "--sampler": values("tpe", "random", "grid"),
    "--pruner": values("feasible", "median", "halving", "hyperband", "none", "asha"),
    "--min-val": values("0.2", "0.9", "1.5"),
    "--max-train": values("1.0", "0.95", "-0.1"),
    "--seed": values("0", "7", "-1", "4294967296"),
    "--study-name": values("synthetic", "other"),
}
LAYOUT_OPTIONS = {
    "--workers": values("1", "2", "auto", "0", "abc"),
    "--per-gpu": values("1", "2", "0"),
    "--gpus": values("0", "0,1", "1,7", "0,0", "x"),
    "--device": values("auto", "cpu", "cuda", "cuda:1", "gpu"),
    "--storage": values("{db}", "{db}", "{new}", "sqlite:/x", "mysql+mysqldb://u:p@h/db", "sqlite:///{tmp}/no/x.db"),
}


def command_line(args: dict[str, str], places: dict[str, str]) -> list[str]:
    line = []
    for option, value in args.items():
        for name, place in places.items():
            value = value.replace("{" + name + "}", place)
        line += [option, value]
    return line


def check_refusal(code: int, output: str) -> None:
    """A refusal: exit code 2 (bad input) or 1, and one `Error:` line of the project's own."""
    assert code in (1, 2), output
    line = error_line(output)
    assert "Traceback" not in output and len(line) > len("Error: ") + 10, output


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.fixed_dictionaries({}, optional={**DEFINITION_OPTIONS, **LAYOUT_OPTIONS}))
def test_any_start_command_line_plans_or_is_refused(
    args: dict[str, str], template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`start --dry-run` with any options: the plan (exit 0) or a refusal, and never a change to any database."""
    monkeypatch.setattr(lrsearch.fleet.supervisor, "cuda_device_count", lambda: 2)
    db = tmp_path / "study.db"
    if not db.exists():
        shutil.copy(template, db)
    study = write_study(tmp_path, STUDY, trials=3, epochs=2)
    places = {"db": f"sqlite:///{db}", "new": f"sqlite:///{tmp_path / 'new.db'}", "tmp": str(tmp_path)}
    before, listing = snapshot(db), files(tmp_path)

    code, output, _ = run("start", str(study), "--dry-run", *command_line(args, places))
    event(f"exit {code}")

    if code == 0:
        assert output.startswith("dry run: nothing was run or written"), output
        if "--trials" in args:
            assert f"\n{int(args['--trials'])} trials of " in output
    else:
        check_refusal(code, output)
    assert files(tmp_path) == listing and snapshot(db) == before


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.fixed_dictionaries({}, optional=DEFINITION_OPTIONS))
def test_any_create_command_line_creates_the_study_or_no_database(
    args: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`create` with any options on a new database: the study as asked for, or a refusal and no database file."""
    folder = tmp_path_factory.mktemp("create")
    study = write_study(folder, STUDY, trials=3, epochs=2)
    url = f"sqlite:///{folder / 'new.db'}"

    code, output, _ = run("create", str(study), "--storage", url, *command_line(args, {}))
    event(f"exit {code}")

    if code == 0:
        name = args.get("--study-name", "synthetic")
        [row] = json.loads(run("studies", "--storage", url, "--json")[1])
        assert row["name"] == name and row["finished"] == 0
        if "--trials" in args:
            assert row["trials"] == int(args["--trials"])
    else:
        check_refusal(code, output)
        assert not (folder / "new.db").exists()


def test_the_readme_table_names_every_case_and_only_tests_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Bad input and outages\n")[1].split("\n## ")[0]
    assert set(re.findall(r"`bad\[([\w-]+)\]`", section)) == {param.id for param in CASES}  # type: ignore[attr-defined]
    named = re.findall(r"`(test_\w+\.py)::(\w+)`", section)
    assert len(named) >= 8
    for file, test in named:
        assert f"\ndef {test}(" in (TESTS / file).read_text(encoding="utf-8"), f"{file}::{test}"
