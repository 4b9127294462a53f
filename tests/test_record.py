"""The trial record: what a trial stores, written and read in one place, and studies of the first format."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState, create_trial

from lrsearch.cli import main
from lrsearch.review.publish import trial_note
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import parse_table
from lrsearch.study.lifecycle import load
from lrsearch.study.record import FORMAT, FORMAT_ATTR, RecordFormatError, TrialRecord
from lrsearch.study.runner import TrialRunner
from lrsearch.train.records import EpochRecord
from synthetic_objective import Synthetic

FIXTURE = Path(__file__).parent / "fixtures" / "format1_study.json"


def load_fixture(url: str, *, mixed: bool = False) -> None:
    """The studies of tests/fixtures/format1_study.json (written by the release before the record had a format
    version) in a real SQLite database; `mixed` adds to study 'synthetic' a pruned copy of its first trial and a
    copy of the failed trial of study 'failing'."""
    storage = open_storage(url)
    studies = json.loads(FIXTURE.read_text(encoding="utf-8"))["studies"]
    if mixed:
        synthetic = next(s for s in studies if s["name"] == "synthetic")
        failed = next(s for s in studies if s["name"] == "failing")["trials"][0]
        first = synthetic["trials"][0]
        synthetic["trials"] += [{**first, "state": "PRUNED", "value": None, "system_attrs": {}}, failed]
    for saved in studies:
        study = optuna.create_study(storage=storage, study_name=saved["name"], direction="maximize")
        for key, value in saved["user_attrs"].items():
            study.set_user_attr(key, value)
        for t in saved["trials"]:
            study.add_trial(
                create_trial(
                    state=TrialState[t["state"]],
                    value=t["value"],
                    params=t["params"],
                    distributions={k: json_to_distribution(d) for k, d in t["distributions"].items()},
                    user_attrs={k: json.loads(v) for k, v in t["user_attrs"].items()},
                    system_attrs=t["system_attrs"],
                    intermediate_values={int(k): v for k, v in t["intermediate_values"].items()},
                )
            )


def records(url: str, name: str) -> list[TrialRecord]:
    study, _ = load(open_storage(url), name)
    return [TrialRecord.from_trial(t) for t in study.get_trials()]


def lrsearch(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"LRSEARCH_ARTIFACT_DIR": "off"}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# --- studies written before the record had a format ----------------------------------------------------------


def test_a_study_of_the_first_format_reads_as_records(sqlite_url: str) -> None:
    load_fixture(sqlite_url)
    first, best = records(sqlite_url, "synthetic")
    assert best.format == 1 and best.state == "complete" and best.counts_as_best
    assert (best.chosen_epoch, best.val_acc, best.train_acc, best.seed) == (2, 0.874, 0.9035, 7000022)
    assert best.strategy.startswith("SGD(lr=0.07258") and best.worker == "host-a:4242" and best.device == "cpu"
    assert best.steps_per_epoch == 32 and best.stop_reason == "trained all 3 epochs"
    assert [e.epoch for e in best.history] == [1, 2, 3] and best.chosen == best.history[1]
    assert best.history[1].val_acc == best.val_acc and best.params["scheduler"] == "cosine"
    assert best.score == 0.874 and first.score == 0.686

    [diverged] = records(sqlite_url, "diverging")
    assert diverged.feasible is False and not diverged.counts_as_best and diverged.score == 0.0
    assert math.isnan(diverged.history[0].train_loss) and diverged.history[0].diverged
    assert diverged.stop_reason == "diverged: loss became nan in epoch 1 (LR too high?)"

    [failed] = records(sqlite_url, "failing")
    assert failed.state == "fail" and failed.history == () and failed.chosen_epoch is None
    assert failed.val_acc is None and failed.feasible is None and failed.traceback is None
    assert failed.stop_reason == "failed: RuntimeError: boom in make_model" and failed.seed == 7000021


def test_read_commands_and_notes_work_on_a_study_of_the_first_format(sqlite_url: str, tmp_path: Path) -> None:
    load_fixture(sqlite_url)
    code, out, err = lrsearch("best", "--storage", sqlite_url, "--study-name", "synthetic")
    assert code == 0, err
    assert "(trial 1)" in out and "val accuracy 0.8740, train accuracy 0.9035 after epoch 2" in out
    assert "      2      0.4499    0.4354     0.9035   0.8740         0.0549        0.0549  <- best feasible" in out
    summary = json.loads(lrsearch("best", "--storage", sqlite_url, "--study-name", "synthetic", "--json")[1])
    stored = json.loads(json.loads(FIXTURE.read_text())["studies"][0]["trials"][1]["user_attrs"]["history"])
    assert summary["history"] == stored and summary["seed"] == 7000022
    rows = json.loads(lrsearch("trials", "--storage", sqlite_url, "--study-name", "failing", "--json")[1])
    assert rows == [
        {
            "number": 0,
            "state": "fail",
            "optimizer": "sgd",
            "scheduler": "constant",
            "lr": rows[0]["lr"],
            "feasible": None,
            "val_acc": None,
            "train_acc": None,
            "epoch": None,
            "stop_reason": "failed: RuntimeError: boom in make_model",
        }
    ]
    code, out, err = lrsearch("studies", "--storage", sqlite_url)
    assert code == 0 and "synthetic: 2/2 trials finished, best feasible val 0.8740" in out
    code, _, err = lrsearch(
        "report", "--storage", sqlite_url, "--study-name", "diverging", "--out", str(tmp_path / "r")
    )
    assert code == 0, err

    _, definition = load(open_storage(sqlite_url), "synthetic")
    note = trial_note(records(sqlite_url, "synthetic")[1], definition)
    assert "### Trial 1: complete, **feasible**" in note
    assert "| **2** (chosen) | 0.4499 | 0.4354 | 0.9035 | 0.8740 | 0.0549 | 0.0549 |" in note


# --- writing and reading back --------------------------------------------------------------------------------

NAN_EPOCHS = (
    EpochRecord(1, 2.3, 0.1, 2.2, 0.12, 0.5, 0.4, 1.5),
    EpochRecord(2, math.nan, 0.098, math.inf, 0.1, 0.4, 0.3, 1.25),
    EpochRecord(3, -math.inf, 0.09, math.nan, 0.1, 0.3, 0.2, 1.0),
)


def full_record(number: int = 0) -> TrialRecord:
    return TrialRecord(
        number=number,
        state="complete",
        params={"optimizer": "sgd", "scheduler": "constant", "lr": 0.5},
        value=0.12,
        strategy="SGD(lr=0.5) + constant LR",
        seed=42,
        worker="host:1",
        device="cpu",
        steps_per_epoch=10,
        history=NAN_EPOCHS,
        chosen_epoch=1,
        val_acc=0.12,
        train_acc=0.1,
        feasible=False,
        stop_reason="diverged: loss became nan in epoch 2 (LR too high?)",
        traceback="Traceback (most recent call last):\n  ...\nRuntimeError: x\n",
    )


def test_a_record_round_trips_through_a_real_database_with_nan_and_inf_losses(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    record = full_record()
    study = optuna.create_study(storage=open_storage(url), study_name="s", direction="maximize")
    study.add_trial(
        create_trial(
            state=TrialState.COMPLETE,
            value=0.12,
            params=dict(record.params),
            user_attrs=record.to_user_attrs(),
            distributions={
                "optimizer": optuna.distributions.CategoricalDistribution(["sgd"]),
                "scheduler": optuna.distributions.CategoricalDistribution(["constant"]),
                "lr": optuna.distributions.FloatDistribution(0.1, 1.0),
            },
        )
    )
    back = TrialRecord.from_trial(optuna.load_study(study_name="s", storage=url).trials[0])
    assert back.format == FORMAT == 2
    # NaN != NaN: compare the epochs by their text
    assert [repr(e) for e in back.history] == [repr(e) for e in record.history]
    assert back == TrialRecord(**{**record.__dict__, "history": back.history})
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        stored = dict(db.execute("SELECT key, value_json FROM trial_user_attributes"))
    # The decided encoding: JSON's NaN / Infinity tokens in the history (what Optuna writes for any float),
    # null in the dashboard curves.
    assert '"train_loss": NaN' in stored["history"] and '"val_loss": Infinity' in stored["history"]
    assert '"train_loss": -Infinity' in stored["history"]
    assert json.loads(stored["curve_train_loss"]) == [2.3, None, None]
    assert json.loads(stored[FORMAT_ATTR]) == 2


def test_the_attribute_keys_are_the_first_formats_plus_the_format() -> None:
    fixture = json.loads(FIXTURE.read_text())["studies"][0]["trials"][0]["user_attrs"]
    written = full_record().to_user_attrs()
    assert set(written) == set(fixture) | {FORMAT_ATTR, "traceback"}
    assert TrialRecord.from_attrs(written, number=0, state="complete").to_user_attrs().keys() == written.keys()


def test_a_newer_format_is_refused_with_a_message() -> None:
    with pytest.raises(RecordFormatError, match=r"trial 3 was written in trial-record format 3.*upgrade lrsearch"):
        TrialRecord.from_attrs({FORMAT_ATTR: FORMAT + 1}, number=3, state="complete")


def test_a_failed_trials_traceback_is_read() -> None:
    attrs = {"stop_reason": "failed: RuntimeError: boom", "worker": "h:1", "traceback": "Traceback ...\nRuntimeError"}
    record = TrialRecord.from_attrs(attrs, number=0, state="fail")
    assert record.traceback == "Traceback ...\nRuntimeError" and record.worker == "h:1"


def test_the_runner_stores_exactly_its_record() -> None:
    objective = Synthetic(samples=640)
    data = objective.load_data(torch.device("cpu"), None)
    space = {"optimizers": ["sgd"], "schedulers": ["constant"], "lr": [0.05, 0.05], "warmup": {"epochs": 0}}
    definition = parse_table({"study": {"epochs": 2}, "space": space}, "test")
    published: list[TrialRecord] = []
    runner = TrialRunner(definition, objective, data, worker="w:1", publish=lambda t, d, r: published.append(r))
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(runner, n_trials=1)
    trial = study.trials[0]
    record = TrialRecord.from_trial(trial)
    assert trial.user_attrs == record.to_user_attrs()
    assert published == [record]  # the dashboard notes get the record the trial stores
    assert record.format == FORMAT and record.worker == "w:1" and len(record.history) == 2
    assert record.val_acc == record.chosen.val_acc  # type: ignore[union-attr]
