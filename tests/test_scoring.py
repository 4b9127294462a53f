"""EpochSelector: the best feasible epoch, else the least violating one; constraints; the overfit stop."""

from __future__ import annotations

import pytest

from lrsearch.study.scoring import EpochSelector
from lrsearch.study.targets import Targets
from lrsearch.train.records import EpochRecord

TARGETS = Targets(min_val=0.90, max_train=0.95, overfit_patience=2)


def record(epoch: int, val_acc: float, train_acc: float) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=0.3,
        train_acc=train_acc,
        val_loss=0.4,
        val_acc=val_acc,
        lr=0.1,
        lr_end=0.1,
        seconds=0.01,
    )


def select(pairs: list[tuple[float, float]], targets: Targets = TARGETS) -> EpochSelector:
    selector = EpochSelector(targets)
    for epoch, (val_acc, train_acc) in enumerate(pairs, start=1):
        selector.add(record(epoch, val_acc, train_acc))
    return selector


def chosen_epoch(pairs: list[tuple[float, float]], targets: Targets = TARGETS) -> int:
    chosen = select(pairs, targets).chosen
    assert chosen is not None
    return chosen.epoch


def test_nothing_chosen_before_any_epoch() -> None:
    selector = EpochSelector(TARGETS)
    assert selector.chosen is None and selector.overfit_streak == 0 and not selector.should_stop(lambda: 0)


@pytest.mark.parametrize(
    ("pairs", "epoch"),
    [
        # The highest val_acc among feasible epochs, even when infeasible ones score higher.
        ([(0.91, 0.92), (0.93, 0.94), (0.97, 0.96), (0.92, 0.95)], 2),
        # Feasible beats infeasible whatever the order.
        ([(0.99, 0.99), (0.90, 0.90)], 2),
        ([(0.90, 0.90), (0.99, 0.99)], 1),
        # The earliest of equal feasible scores: fewer epochs to train.
        ([(0.92, 0.93), (0.94, 0.93), (0.94, 0.94), (0.93, 0.93)], 2),
        # On the boundary is feasible: val_acc == min_val and train_acc == max_train.
        ([(0.89, 0.9), (0.90, 0.95)], 2),
        # A later, better feasible epoch replaces an earlier one.
        ([(0.91, 0.9), (0.95, 0.94)], 2),
    ],
)
def test_best_feasible_epoch(pairs: list[tuple[float, float]], epoch: int) -> None:
    selector = select(pairs)
    assert selector.chosen is not None and selector.chosen.epoch == epoch
    assert selector.feasible(selector.chosen)


@pytest.mark.parametrize(
    ("pairs", "epoch"),
    [
        # None feasible: the smallest total violation (0.05, 0.02, 0.04 + 0.01).
        ([(0.85, 0.80), (0.88, 0.85), (0.86, 0.96)], 2),
        # Overfitting violations count too: 0.04, 0.01, 0.03.
        ([(0.97, 0.99), (0.96, 0.96), (0.95, 0.98)], 2),
        # Ties: the earliest.
        ([(0.88, 0.5), (0.80, 0.5), (0.88, 0.6)], 1),
    ],
)
def test_least_violating_epoch_when_none_is_feasible(pairs: list[tuple[float, float]], epoch: int) -> None:
    selector = select(pairs)
    assert selector.chosen is not None and selector.chosen.epoch == epoch
    assert not selector.feasible(selector.chosen)


def test_violations_and_constraints() -> None:
    selector = EpochSelector(Targets(min_val=0.5, max_train=0.75))
    ok, low, high = record(1, 0.625, 0.5), record(2, 0.25, 0.5), record(3, 0.75, 0.875)
    assert selector.violations(ok) == (0.0, 0.0) and selector.feasible(ok)
    assert selector.violations(low) == (0.25, 0.0) and not selector.feasible(low)
    assert selector.violations(high) == (0.0, 0.125) and not selector.feasible(high)
    finite = {"loss_finite": 0.0}
    assert selector.constraints(ok) == {"val_acc_ge_min": -0.125, "train_acc_le_max": -0.25, **finite}
    assert selector.constraints(low) == {"val_acc_ge_min": 0.25, "train_acc_le_max": -0.25, **finite}
    assert selector.constraints(high) == {"val_acc_ge_min": -0.25, "train_acc_le_max": 0.125, **finite}


@pytest.mark.parametrize("val_acc", [0.0, 0.5, 0.875, 0.89, 0.9, 0.9000001, 0.95, 1.0])
@pytest.mark.parametrize("train_acc", [0.0, 0.5, 0.94, 0.95, 0.9500001, 0.99, 1.0])
def test_constraints_are_satisfied_iff_feasible(val_acc: float, train_acc: float) -> None:
    selector = EpochSelector(TARGETS)
    r = record(1, val_acc, train_acc)
    constraints = selector.constraints(r)
    assert set(constraints) == {"val_acc_ge_min", "train_acc_le_max", "loss_finite"}
    assert (constraints["val_acc_ge_min"] <= 0) == (val_acc >= TARGETS.min_val)
    assert (constraints["train_acc_le_max"] <= 0) == (train_acc <= TARGETS.max_train)
    assert all(v <= 0 for v in constraints.values()) == selector.feasible(r)


def test_overfit_streak_counts_epochs_in_a_row_above_the_ceiling() -> None:
    selector = EpochSelector(TARGETS)
    streaks = []
    for epoch, train_acc in enumerate([0.96, 0.97, 0.94, 0.95, 0.951, 0.99, 0.999], start=1):
        selector.add(record(epoch, 0.93, train_acc))
        streaks.append(selector.overfit_streak)
    assert streaks == [1, 2, 0, 0, 1, 2, 3]


@pytest.mark.parametrize(
    ("patience", "train_accs", "stops"),
    [
        (2, [0.9, 0.96], [False, False]),
        (2, [0.9, 0.96, 0.97], [False, False, True]),
        (2, [0.96, 0.94, 0.96, 0.97, 0.98], [False, False, False, True, True]),
        (2, [0.96, 0.95, 0.96], [False, False, False]),  # equal to the ceiling is not above it
        (1, [0.9, 0.96], [False, True]),
        (0, [0.99] * 6, [False] * 6),  # 0: never stop
    ],
)
def test_should_stop(patience: int, train_accs: list[float], stops: list[bool]) -> None:
    selector = EpochSelector(Targets(min_val=0.9, max_train=0.95, overfit_patience=patience))
    seen = []
    for epoch, train_acc in enumerate(train_accs, start=1):
        selector.add(record(epoch, 0.92, train_acc))
        seen.append(selector.should_stop(lambda: 0))
    assert seen == stops


def test_chosen_is_kept_while_later_epochs_are_worse() -> None:
    selector = select([(0.93, 0.9), (0.95, 0.94)])
    best = selector.chosen
    for epoch, (val_acc, train_acc) in enumerate([(0.94, 0.93), (0.99, 0.97), (0.2, 0.2)], start=3):
        selector.add(record(epoch, val_acc, train_acc))
        assert selector.chosen is best


def test_targets_from_the_study_are_used() -> None:
    strict = Targets(min_val=0.95, max_train=0.97)
    pairs = [(0.93, 0.93), (0.96, 0.965)]
    assert chosen_epoch(pairs, strict) == 2
    assert chosen_epoch(pairs, Targets(min_val=0.9, max_train=0.95)) == 1


def test_a_diverged_epoch_is_never_feasible() -> None:
    selector = EpochSelector(TARGETS)
    diverged = EpochRecord(1, float("nan"), 0.93, float("inf"), 0.92, 0.1, 0.1, 0.01)
    assert diverged.diverged and not selector.feasible(diverged)
    selector.add(diverged)
    selector.add(record(2, 0.91, 0.93))
    assert selector.chosen is not None and selector.chosen.epoch == 2
    # Optuna agrees: a diverged epoch with good accuracies still violates a constraint.
    assert selector.constraints(diverged)["loss_finite"] == 1.0
    assert not all(v <= 0 for v in selector.constraints(diverged).values())


def test_should_stop_waits_for_the_last_rise_of_the_lr() -> None:
    selector = EpochSelector(Targets(min_val=0.9, max_train=0.95, overfit_patience=2))
    asked = []

    def last_rise() -> int:
        asked.append(selector.epoch)
        return 4

    stops = []
    for epoch in range(1, 7):
        selector.add(record(epoch, 0.92, 0.99))
        stops.append(selector.should_stop(last_rise))
    assert stops == [False, False, False, True, True, True]
    assert asked[0] == 2  # asked only once the streak is long enough
