from __future__ import annotations

import dataclasses
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from optuna_dashboard._note import get_note_from_system_attrs

from chromium import assert_not_blank, chromium, keep, needs_chromium, wait_for
from conftest import write_study
from lrsearch.cli import main
from lrsearch.errors import LRSearchError
from lrsearch.review.dashboard import serving_constraints
from lrsearch.review.publish import artifact_dir, default_artifact_dir, publish_trial
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import parse_table
from lrsearch.study.lifecycle import create_or_resume, load
from lrsearch.study.record import SCORE_ATTR
from lrsearch.study.runner import TrialRunner
from lrsearch.train.objective import load_data, load_objective

TRIALS = 8
STUDY = """
[objective]
name = "synthetic_objective:Synthetic"
samples = 800

[targets]
min_val = 0.6  # low enough that some of the 8 trials (unseeded TPE) are feasible
max_train = 0.95

[pruner]
name = "median"
n_startup_trials = 3
n_warmup_steps = 1

[space]
optimizers = ["adagrad", "adam"]
schedulers = ["constant", "cosine", "step", "plateau"]
lr = [0.01, 0.2]
"""


def lrsearch(*args: str) -> tuple[int, str, str]:
    # one worker, in this process: the synthetic objective imports here, not in worker processes
    result = CliRunner().invoke(main, list(args), env={"LRSEARCH_WORKERS": "1"}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished study made by `lrsearch start`, with the default artifact folder beside its SQLite file."""
    folder = tmp_path_factory.mktemp("dashboard")
    url = f"sqlite:///{folder / 'study.db'}"
    study_file = write_study(folder, STUDY, name="review", trials=TRIALS, epochs=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LRSEARCH_ARTIFACT_DIR", raising=False)
        code, _, err = lrsearch("start", str(study_file), "--storage", url, "--device", "cpu")
    assert code == 0, err
    return folder / "study.db"


def url_of(db: Path) -> str:
    return f"sqlite:///{db}"


# --- what the workers publish -------------------------------------------------------------------------------


def test_every_trial_publishes_sortable_scores_curves_and_a_note(study_db: Path) -> None:
    study, _ = load(open_storage(url_of(study_db)), "review")
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS
    for trial in finished:
        attrs = trial.user_attrs
        epochs = len(attrs["history"])
        feasible = trial.state == TrialState.COMPLETE and attrs["feasible"]
        assert attrs[SCORE_ATTR] == (attrs["val_acc"] if feasible else 0.0)
        assert attrs["curve_val_acc"] == [float(f"{r['val_acc']:.4g}") for r in attrs["history"]]
        assert all(len(attrs[f"curve_{k}"]) == epochs for k in ("train_acc", "val_loss", "train_loss", "lr"))
        note = get_note_from_system_attrs(system_attrs, trial._trial_id)["body"]
        assert note.startswith(f"### Trial {trial.number}: ") and note.count("\n| ") == epochs + 1
        assert f"**{attrs['epoch']}** (chosen)" in note


def test_artifacts_go_beside_the_database(study_db: Path) -> None:
    study, _ = load(open_storage(url_of(study_db)), "review")
    folder = study_db.with_name("study.db.artifacts")
    for trial in study.trials:
        metas = [json.loads(v) for k, v in trial.system_attrs.items() if k.startswith("artifacts:")]
        names = sorted(m["filename"] for m in metas)
        expected = [f"trial-{trial.number}-history.csv"]
        if trial.state == TrialState.COMPLETE:
            expected.insert(0, f"trial-{trial.number}-curves.png")
        assert names == expected
        for meta in metas:
            assert (folder / meta["artifact_id"]).stat().st_size > 100
    png = next(m for t in study.trials for m in _metas(t) if m["filename"].endswith(".png"))
    copy = folder.parent / "curves.png"
    copy.write_bytes((folder / png["artifact_id"]).read_bytes())
    assert_not_blank(copy)


def _metas(trial: optuna.trial.FrozenTrial) -> list[dict[str, Any]]:
    return [json.loads(v) for k, v in trial.system_attrs.items() if k.startswith("artifacts:")]


def test_the_study_note_names_the_best_feasible_trial_not_the_dashboards_badge(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    definition = parse_table({"study": {"name": "notes"}, "objective": {"name": "x:y"}}, "test")
    study = create_or_resume(storage, definition)
    for value, feasible in ((0.99, False), (0.93, True), (0.91, True)):
        attrs = {
            "val_acc": value,
            "train_acc": 0.94 if feasible else 0.99,
            "epoch": 3,
            "feasible": feasible,
            "strategy": f"S{value}",
        }
        constraints = {"val_acc_ge_min": 0.9 - value, "train_acc_le_max": attrs["train_acc"] - 0.95}
        study.add_trial(
            create_trial(
                value=value,
                params={"lr": 0.1},
                distributions={"lr": FloatDistribution(0, 1)},
                user_attrs=attrs,
                constraints=constraints,
            )
        )
    assert study.best_trial.number == 1  # Optuna 5 honours the constraints ...
    assert storage.get_best_trial(study._study_id).number == 0  # ... what the dashboard badges does not
    with socket.socket() as busy:  # the port is checked before any note is written
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = lrsearch("dashboard", "--storage", sqlite_url, "--port", str(busy.getsockname()[1]))
    assert code == 1 and "cannot listen on 127.0.0.1" in err
    note = get_note_from_system_attrs(storage.get_study_system_attrs(study._study_id), None)["body"]
    assert note == ""  # nothing is written before the address is known to work
    from lrsearch.review.dashboard import refresh_notes

    assert refresh_notes(storage) == [("notes", study._study_id)]
    note = get_note_from_system_attrs(storage.get_study_system_attrs(study._study_id), None)["body"]
    assert "**Best feasible trial: 1**: val accuracy 0.9300 after epoch 3" in note
    assert "`val_acc_at_best_feasible_epoch`" in note and f"`{SCORE_ATTR}`" in note


def test_a_failing_publish_never_fails_the_trial(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from synthetic_objective import Synthetic

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("lrsearch.review.publish._publish", broken)
    from test_trial import SGD

    definition = parse_table({"study": {"epochs": 1}, "space": SGD}, "test")
    objective = Synthetic(samples=320)
    study = optuna.create_study(direction="maximize")
    with caplog.at_level(logging.WARNING, logger="lrsearch.review.publish"):
        data = objective.load_data(torch.device("cpu"), None)
        study.optimize(TrialRunner(definition, objective, data, publish=publish_trial), n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert "trial 0: could not publish its curves and notes for the dashboard: OSError: disk full" in caplog.text


# --- where artifacts go, and the server's address -----------------------------------------------------------


def test_artifact_folder_defaults_beside_sqlite_and_can_be_set_or_turned_off(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LRSEARCH_ARTIFACT_DIR", raising=False)
    assert default_artifact_dir(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db.artifacts"
    assert default_artifact_dir("sqlite:///:memory:") is None
    assert default_artifact_dir("postgresql+psycopg2://u:p@host/db") is None  # workers may share no folder
    assert artifact_dir(f"sqlite:///{tmp_path}/a.db", tmp_path / "given") == tmp_path / "given"
    monkeypatch.setenv("LRSEARCH_ARTIFACT_DIR", str(tmp_path / "env"))
    assert artifact_dir("postgresql+psycopg2://u:p@host/db") == tmp_path / "env"
    monkeypatch.setenv("LRSEARCH_ARTIFACT_DIR", "off")
    assert artifact_dir(f"sqlite:///{tmp_path}/a.db") is None
    assert artifact_dir(f"sqlite:///{tmp_path}/a.db", "OFF") is None


def test_a_busy_port_is_a_message(sqlite_url: str) -> None:
    from lrsearch.review.dashboard import check_port

    open_storage(sqlite_url)  # a database to serve
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LRSearchError, match=f"cannot listen on 127.0.0.1:{port}: .*Choose another --port"):
            check_port("127.0.0.1", port)
        code, _, err = lrsearch("dashboard", "--storage", sqlite_url, "--port", str(port))
    assert code == 1 and "is a dashboard already running there?" in err and "Traceback" not in err
    with pytest.raises(LRSearchError, match="not an address of this machine"):
        check_port("no-such-host.invalid", 8080)


def test_binding_beyond_localhost_warns_and_serves_the_artifacts(
    monkeypatch: pytest.MonkeyPatch, study_db: Path
) -> None:
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    served: dict[str, Any] = {}
    monkeypatch.setattr(optuna_dashboard, "run_server", lambda storage, **kw: served.update(kw, storage=storage))
    port = free_port()
    code, _, err = lrsearch("dashboard", "--storage", url_of(study_db), "--host", "0.0.0.0", "--port", str(port))
    assert code == 0, err
    assert err.startswith("warning: binding 0.0.0.0: optuna-dashboard has no authentication")
    assert f"study 'review': http://0.0.0.0:{port}/dashboard/studies/1" in err
    assert served["host"] == "0.0.0.0" and served["port"] == port
    assert isinstance(served["artifact_store"], FileSystemArtifactStore)
    assert served["artifact_store"]._base_path == study_db.with_name("study.db.artifacts")
    served.clear()
    code, _, err = lrsearch("dashboard", "--storage", url_of(study_db), "--port", str(port), "--artifact-dir", "off")
    assert code == 0 and "warning" not in err and served["host"] == "127.0.0.1"
    assert served["artifact_store"] is None and "artifacts: none" in err


def test_optuna_5_would_count_constraints_twice_if_both_formats_were_stored() -> None:
    """Why lrsearch does not also store optuna-dashboard's `constraints` list: Optuna 5 merges the list (keys 0, 1,
    ...) with the `constraints:<key>` attributes, so every constraint would count twice, e.g. in TPE's infeasibility
    score. The dashboard served by `lrsearch dashboard` is given the list instead (see serving_constraints)."""
    from optuna.samplers._tpe.sampler import _get_infeasible_trial_score

    per_key = {"constraints:val_acc_ge_min": 0.25, "constraints:train_acc_le_max": -0.5}
    both = {**per_key, "constraints": [0.25, -0.5]}
    one = create_trial(value=0.5, system_attrs=per_key)
    two = create_trial(value=0.5, system_attrs=both)
    assert one.constraints == {"val_acc_ge_min": 0.25, "train_acc_le_max": -0.5}
    assert len(two.constraints) == 4
    assert _get_infeasible_trial_score(two) == 2 * _get_infeasible_trial_score(one)


def test_the_served_dashboard_reads_optuna_5_constraints() -> None:
    from optuna_dashboard import _serializer

    infeasible = create_trial(value=0.5, system_attrs={"constraints:a": 0.25, "constraints:b": -0.5})
    legacy = create_trial(value=0.5, system_attrs={"constraints": [-0.1]})
    unconstrained = create_trial(value=0.5)
    assert _serializer.serialize_frozen_trial(1, infeasible, {})["constraints"] == []  # 0.21 alone: "feasible"
    with serving_constraints():
        assert _serializer.serialize_frozen_trial(1, infeasible, {})["constraints"] == [0.25, -0.5]
        assert _serializer.serialize_frozen_trial(1, legacy, {})["constraints"] == [-0.1]
        assert _serializer.serialize_frozen_trial(1, unconstrained, {})["constraints"] == []
    assert _serializer.serialize_frozen_trial(1, infeasible, {})["constraints"] == []  # restored


# --- the real thing: the server and headless Chromium -------------------------------------------------------


@pytest.fixture
def dashboard_url(study_db: Path, subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    command = [
        sys.executable,
        "-c",
        "from lrsearch.cli import main; main()",
        "dashboard",
        "--storage",
        url_of(study_db),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=subprocess_env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/meta", timeout=5) as response:
                    assert json.load(response)["artifact_is_available"] is True
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "dashboard.log").read_text()
                assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
                time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def _run_an_infeasible_trial(db: Path) -> None:
    """One more trial of the study, run by lrsearch's own runner, under a val accuracy bound it cannot reach."""
    study, definition = load(open_storage(url_of(db)), "review")
    strict = dataclasses.replace(definition, targets=dataclasses.replace(definition.targets, min_val=0.999))
    objective = load_objective(definition.objective, definition.objective_options)
    data = load_data(objective, definition.objective, torch.device("cpu"), None)
    study.pruner = optuna.pruners.NopPruner()  # it must complete
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        trial = study.ask()
    study.tell(trial, TrialRunner(strict, objective, data)(trial))


def test_chromium_shows_trials_curves_notes_and_artifacts(dashboard_url: str, study_db: Path, tmp_path: Path) -> None:
    _run_an_infeasible_trial(study_db)
    study, _ = load(open_storage(url_of(study_db)), "review")
    best = study.best_trial.number  # the best feasible trial (Optuna 5)
    with_curves = sum(bool(t.intermediate_values) for t in study.trials)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    infeasible = {t.number for t in complete if any(v > 0 for v in t.constraints.values())}
    page = f"{dashboard_url}/dashboard/studies/{study._study_id}"
    with chromium(1400, 1600) as driver:
        driver.get(page)
        # the learning-curve plot: one line per trial with intermediate values (val accuracy per epoch)
        wait_for(
            driver,
            f"return document.querySelectorAll('#graph-intermediate-values g.trace').length >= {with_curves}",
        )
        wait_for(driver, "return document.querySelectorAll('#plot-history path.point').length > 0")
        # each complete trial's curve says whether it is feasible: "trial #N (infeasible)" for the infeasible ones
        names = driver.execute_script(
            "return document.querySelector('#graph-intermediate-values').data.map(trace => trace.name)"
        )
        marked = {int(name.split("#")[1].split()[0]) for name in names if name.endswith("(infeasible)")}
        assert infeasible and marked == infeasible, names
        overview = tmp_path / "dashboard-study.png"
        driver.save_screenshot(str(overview))
        driver.execute_script("document.querySelector('#graph-intermediate-values').scrollIntoView()")
        curves = tmp_path / "dashboard-learning-curves.png"
        driver.save_screenshot(str(curves))

        driver.get(f"{page}/trials")
        wait_for(driver, f"return document.body.innerText.includes('Trial {TRIALS - 1}')")
        listed = driver.execute_script("return document.body.innerText")
        assert all(f"Trial {n}\n" in listed for n in range(TRIALS))

        driver.get(f"{page}/trials?numbers={best}")
        wait_for(driver, "return document.body.innerText.includes('(chosen)')")  # the trial note's epoch table
        wait_for(
            driver,
            "return Array.from(document.images).some(i => i.src.includes('/artifacts/') && i.complete"
            " && i.naturalWidth > 300)",
        )
        text = driver.execute_script("return document.body.innerText")
        assert f"Trial {best}: complete, feasible" in text and f"{SCORE_ATTR} " in text and "curve_val_acc" in text
        trial_page = tmp_path / "dashboard-best-trial.png"
        driver.save_screenshot(str(trial_page))

        driver.get(f"{page}/note")
        wait_for(driver, f"return document.body.innerText.includes('Best feasible trial: {best}')")
        note_page = tmp_path / "dashboard-note.png"
        driver.save_screenshot(str(note_page))
    print(f"screenshots: {overview} {curves} {trial_page} {note_page}")
    for shot in (overview, curves, trial_page, note_page):
        assert_not_blank(keep(shot))
