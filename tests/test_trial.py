from __future__ import annotations

import optuna
import pytest
import torch

from lrsearch.study.definition import parse_table
from lrsearch.study.runner import TrialRunner
from synthetic_objective import Synthetic

OBJECTIVE = Synthetic(samples=640)
DATA = OBJECTIVE.load_data(torch.device("cpu"), None)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def run(
    space: dict,
    *,
    targets: dict | None = None,
    epochs: int = 3,
    pruner: optuna.pruners.BasePruner | None = None,
    enqueue: dict | None = None,
) -> optuna.trial.FrozenTrial:
    definition = parse_table({"study": {"epochs": epochs}, "targets": targets or {}, "space": space}, "test")
    study = optuna.create_study(direction="maximize", pruner=pruner or optuna.pruners.NopPruner())
    if enqueue:
        study.enqueue_trial(enqueue["params"], user_attrs=enqueue.get("user_attrs"))
    study.optimize(TrialRunner(definition, OBJECTIVE, DATA), n_trials=1)
    return study.trials[0]


SGD = {
    "optimizers": ["sgd"],
    "schedulers": ["constant"],
    "lr": [0.05, 0.05],
    "warmup": {"epochs": 0},
    "sgd": {"momentum": 0.9, "nesterov": False},
}


def test_complete_trial_scores_its_best_feasible_epoch() -> None:
    trial = run(SGD, targets={"min_val": 0.3, "max_train": 1.0})
    history = trial.user_attrs["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert trial.intermediate_values == {h["epoch"]: h["val_acc"] for h in history}
    best = max(history, key=lambda h: h["val_acc"])
    assert trial.value == best["val_acc"] and trial.user_attrs["epoch"] == best["epoch"]
    assert trial.user_attrs["feasible"] is True
    assert trial.system_attrs["constraints:val_acc_ge_min"] == pytest.approx(0.3 - best["val_acc"])
    assert trial.system_attrs["constraints:train_acc_le_max"] == pytest.approx(best["train_acc"] - 1.0)
    assert "sgd" in trial.params["optimizer"] and trial.user_attrs["seed"] >= 0


def test_infeasible_trial_reports_violated_constraints_and_is_not_best() -> None:
    trial = run(SGD, targets={"min_val": 1.0, "max_train": 0.0, "overfit_patience": 0})
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["feasible"] is False
    assert trial.system_attrs["constraints:train_acc_le_max"] > 0


def test_pruned_trial_stops_and_sets_no_constraints() -> None:
    trial = run(SGD, pruner=AlwaysPrune())
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert len(trial.user_attrs["history"]) == 1
    assert trial.user_attrs["stop_reason"] == "pruned after epoch 1"
    assert not any(key.startswith("constraints") for key in trial.system_attrs)


def test_overfitting_trial_stops_early() -> None:
    trial = run(SGD, targets={"max_train": 0.0, "overfit_patience": 2}, epochs=5)
    assert len(trial.user_attrs["history"]) == 2
    assert trial.user_attrs["stop_reason"].startswith("stopped after epoch 2: train accuracy above 0.0")


def test_divergence_ends_the_trial_with_its_reason() -> None:
    trial = run({**SGD, "lr": [50.0, 50.0]}, epochs=4)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["stop_reason"].startswith("diverged")
    assert len(trial.user_attrs["history"]) < 4


def test_a_retried_trial_keeps_its_seed() -> None:
    params = {
        "optimizer": "sgd",
        "scheduler": "constant",
        "lr": 0.05,
        "sgd.momentum": 0.9,
        "warmup.epochs": 0,
    }
    first = run(SGD, enqueue={"params": params, "user_attrs": {"seed": 12345}})
    again = run(SGD, enqueue={"params": params, "user_attrs": {"seed": 12345}})
    assert first.user_attrs["seed"] == 12345
    assert first.user_attrs["history"][0]["train_loss"] == again.user_attrs["history"][0]["train_loss"]


SCHEDULES = {
    # (family's params, warmup epochs): epochs trained with the training accuracy above the ceiling from epoch 1
    "step": ({"step.step_size": 1, "step.gamma": 0.5}, 0, 2),
    "cosine": ({"cosine.min_factor": 0.01}, 0, 2),
    "plateau": ({"plateau.factor": 0.5, "plateau.patience": 0}, 0, 2),
    # 10 steps an epoch, cycles of 30: the LR peaks at steps 15 and 45 (epochs 2 and 5)
    "cyclic": ({"cyclic.ratio": 10.0, "cyclic.cycle_epochs": 3.0, "cyclic.mode": "triangular"}, 0, 5),
    # restarts after epochs 2 and 4
    "cosine_restarts": (
        {"cosine_restarts.T_0": 2, "cosine_restarts.T_mult": 1, "cosine_restarts.min_factor": 0.01},
        0,
        5,
    ),
    # a warmup of 3 epochs: the LR rises until epoch 4, where cosine starts from the peak
    "warmup, then cosine": ({"cosine.min_factor": 0.01, "warmup.start_factor": 0.1}, 3, 4),
}


@pytest.mark.parametrize("family", SCHEDULES)
def test_an_overfitting_trial_is_not_stopped_while_its_lr_will_rise_again(family: str) -> None:
    params, warmup, trained = SCHEDULES[family]
    scheduler = family.split(", then ")[-1]
    space = {**SGD, "schedulers": [scheduler], "warmup": {"epochs": [0, 3]}}
    enqueued = {"optimizer": "sgd", "lr": 0.05, "sgd.momentum": 0.9, "scheduler": scheduler, **params}
    trial = run(space, targets={"max_train": 0.0, "overfit_patience": 2}, epochs=6,
                enqueue={"params": {**enqueued, "warmup.epochs": warmup}})  # fmt: skip
    assert trial.params["scheduler"] == scheduler and trial.params["warmup.epochs"] == warmup
    assert len(trial.user_attrs["history"]) == trained
    assert trial.user_attrs["stop_reason"].startswith(f"stopped after epoch {trained}: train accuracy above 0.0")
