from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lrsearch.study.pruning import FeasiblePercentilePruner, percentile
from lrsearch.study.targets import Targets

TARGETS = Targets(min_val=0.90, max_train=0.95)


def epochs(*accuracies: tuple[float, float]) -> list[dict[str, float]]:
    return [
        {
            "epoch": i,
            "train_loss": 0.1,
            "train_acc": train,
            "val_loss": 0.1,
            "val_acc": val,
            "lr": 0.1,
            "lr_end": 0.1,
            "seconds": 1.0,
        }
        for i, (val, train) in enumerate(accuracies, start=1)
    ]


def study_with(histories: list[list[dict[str, float]]], state: TrialState = TrialState.COMPLETE) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for history in histories:
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=None if state != TrialState.COMPLETE else history[-1]["val_acc"],
                intermediate_values={h["epoch"]: h["val_acc"] for h in history},
                user_attrs={"history": history},
            )
        )
    return study


def running(history: list[dict[str, float]]) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=TrialState.RUNNING,
        intermediate_values={h["epoch"]: h["val_acc"] for h in history},
        user_attrs={"history": history},
    )


# Fast learners: high val_acc early, then over the training ceiling (stopped after 3 epochs).
OVERFIT = epochs((0.95, 0.955), (0.97, 0.975), (0.975, 0.985))
# A slow riser that is feasible at epoch 3 with val 0.935 and will climb to ~0.955.
SLOW_FEASIBLE = epochs((0.85, 0.85), (0.91, 0.91), (0.935, 0.93))
# A trial stuck at chance.
STUCK = epochs((0.11, 0.11), (0.11, 0.11), (0.11, 0.11))


def test_keeps_the_slow_feasible_trial_that_optunas_median_pruner_would_cut() -> None:
    study = study_with([OVERFIT] * 5)
    assert optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2).prune(study, running(SLOW_FEASIBLE))
    assert not FeasiblePercentilePruner(TARGETS).prune(study, running(SLOW_FEASIBLE))


def test_prunes_a_trial_below_the_feasible_median() -> None:
    study = study_with([SLOW_FEASIBLE] * 5)
    assert FeasiblePercentilePruner(TARGETS).prune(study, running(STUCK))
    assert not FeasiblePercentilePruner(TARGETS).prune(study, running(SLOW_FEASIBLE))


@pytest.mark.parametrize(("finished", "warmup", "epochs_run"), [(4, 2, 3), (5, 3, 3), (5, 2, 2)])
def test_waits_for_startup_trials_and_warmup_epochs(finished: int, warmup: int, epochs_run: int) -> None:
    study = study_with([SLOW_FEASIBLE] * finished)
    pruner = FeasiblePercentilePruner(TARGETS, n_startup_trials=5, n_warmup_steps=warmup)
    assert not pruner.prune(study, running(STUCK[:epochs_run]))


def test_a_stopped_complete_trial_keeps_its_score_a_pruned_one_does_not() -> None:
    pruner = FeasiblePercentilePruner(TARGETS)
    complete = study_with([SLOW_FEASIBLE[:2]]).trials[0]
    pruned = study_with([SLOW_FEASIBLE[:2]], TrialState.PRUNED).trials[0]
    assert pruner.score(complete, 3) == pytest.approx(0.91)
    assert pruner.score(pruned, 3) is None
    assert pruner.score(running(OVERFIT), 3) == pytest.approx(-0.005)  # least violation: epoch 1, 0.955 - 0.95


def test_reads_the_finished_trials_once_per_pruned_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    study = study_with([SLOW_FEASIBLE + SLOW_FEASIBLE[-1:] * 2] * 5)
    reads = []
    get_trials = study.get_trials
    monkeypatch.setattr(study, "get_trials", lambda **kwargs: reads.append(kwargs) or get_trials(**kwargs))
    pruner = FeasiblePercentilePruner(TARGETS)
    for number, history, pruned in [(7, STUCK * 2, True), (8, SLOW_FEASIBLE * 2, False)]:
        for epoch in (3, 4, 5):
            trial = running(epochs(*((row["val_acc"], row["train_acc"]) for row in history[:epoch])))
            trial.number = number
            assert pruner.prune(study, trial) is pruned
    assert len(reads) == 2  # one per trial, not one per epoch


def test_prunes_below_the_percentile_not_below_the_median() -> None:
    slower = epochs((0.85, 0.85), (0.88, 0.88), (0.90, 0.90))
    study = study_with([STUCK, slower, SLOW_FEASIBLE, SLOW_FEASIBLE, SLOW_FEASIBLE])
    # the others' scores at epoch 3: -0.79, 0.90, 0.935, 0.935, 0.935: 25th percentile 0.90, median 0.935
    rising = running(epochs((0.80, 0.80), (0.88, 0.88), (0.915, 0.915)))
    assert not FeasiblePercentilePruner(TARGETS).prune(study, rising)  # the default, 25
    assert FeasiblePercentilePruner(TARGETS, percentile=50).prune(study, rising)
    assert FeasiblePercentilePruner(TARGETS).prune(study, running(STUCK))


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 25) == 2.0
    assert percentile([7.0], 25) == 7.0
    assert (percentile([1.0, 9.0], 0), percentile([1.0, 9.0], 100)) == (1.0, 9.0)


def diverged(history: list[dict[str, float]], val: float, train: float) -> list[dict[str, float]]:
    """`history` and then an epoch whose training loss became NaN (its validation loss inf), with these accuracies."""
    last = {**epochs((val, train))[0], "epoch": len(history) + 1, "train_loss": math.nan, "val_loss": math.inf}
    return [*history, last]


def test_a_diverged_epoch_never_scores_as_feasible_in_the_replay(tmp_path: Path) -> None:
    # Trials that were infeasible, then diverged in epoch 3 while their accuracies happened to be within the
    # targets: their result is still their best epoch that trained (val 0.6), not "violation 0".
    blew_up = diverged(epochs((0.5, 0.5), (0.6, 0.6)), val=0.92, train=0.93)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", direction="maximize")
    for _ in range(5):
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=0.6,
                intermediate_values={1: 0.5, 2: 0.6},
                user_attrs={"history": blew_up},
            )
        )
    stored = study.get_trials()[0]
    assert math.isnan(stored.user_attrs["history"][-1]["train_loss"])  # NaN went through the JSON and back
    pruner = FeasiblePercentilePruner(TARGETS)
    assert pruner.score(stored, 3) == pruner.score(stored, 2) == pytest.approx(-0.3)
    # A trial that trains, near the targets: above those that diverged, so not pruned.
    assert not pruner.prune(study, running(epochs((0.85, 0.85), (0.86, 0.86), (0.87, 0.87))))
    # One that diverged scores below every epoch that trained.
    assert pruner.score(running(blew_up[2:]), 1) is not None
    assert pruner.score(running(blew_up[2:]), 1) < -0.95  # type: ignore[operator]
