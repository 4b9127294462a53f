from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lrsearch.strategy.schedule import Schedule
from lrsearch.strategy.strategy import LRStrategy
from lrsearch.train.loop import evaluate, steps_per_epoch, train
from lrsearch.train.records import EpochRecord
from synthetic_objective import Synthetic

OBJECTIVE = Synthetic(samples=640, batch_size=64)
DATA = OBJECTIVE.load_data(torch.device("cpu"), None)
SGD_COSINE = LRStrategy("sgd", 0.05, "cosine", 3, {"momentum": 0.9, "nesterov": True}, {"min_factor": 0.01})


def without_time(records: list[EpochRecord]) -> list[dict[str, float]]:
    return [{k: v for k, v in r.as_dict().items() if k != "seconds"} for r in records]


def plain_loop(strategy: LRStrategy, seed: int) -> list[dict[str, float]]:
    """The same training written the usual way, step by step, as the reference for the fast loop."""
    torch.manual_seed(seed)
    model = OBJECTIVE.make_model()
    schedule = Schedule(strategy, model.parameters(), steps_per_epoch(DATA, OBJECTIVE.batch_size), fused=False)
    generator = torch.Generator().manual_seed(seed)
    n = len(DATA.train_targets)
    out = []
    for epoch in range(1, strategy.epochs + 1):
        model.train()
        lr_first, losses = schedule.lr, []
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, OBJECTIVE.batch_size):
            batch = order[start : start + OBJECTIVE.batch_size]
            loss = torch.nn.functional.cross_entropy(model(DATA.train_inputs[batch]), DATA.train_targets[batch])
            schedule.optimizer.zero_grad()
            loss.backward()
            schedule.optimizer.step()
            lr_last = schedule.lr
            schedule.after_batch()
            losses.append(loss.item() * len(batch))
        val_loss, val_acc = evaluate(model, OBJECTIVE, DATA.val_inputs, DATA.val_targets)
        train_acc = evaluate(model, OBJECTIVE, DATA.train_inputs, DATA.train_targets)[1]
        schedule.after_epoch(val_loss)
        out.append(
            {
                "epoch": epoch,
                "train_loss": sum(losses) / n,
                "train_acc": train_acc,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": lr_first,
                "lr_end": lr_last,
            }
        )
    return out


@pytest.mark.parametrize(
    "strategy",
    [
        SGD_COSINE,
        LRStrategy(
            "adam",
            0.002,
            "onecycle",
            3,
            {},
            {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 100.0, "anneal_strategy": "cos"},
        ),
        LRStrategy("adamw", 0.002, "step", 3, {}, {"step_size": 1, "gamma": 0.5}),
        LRStrategy("adagrad", 0.05, "exponential", 3, {}, {"gamma": 0.8}),
        LRStrategy("rmsprop", 0.001, "constant", 3),
    ],
    ids=lambda s: s.optimizer,
)
def test_fast_loop_matches_a_plain_loop(strategy: LRStrategy) -> None:
    """The fast loop (device-resident batches, fused optimizer kernels) against the usual loop (unfused)."""
    fast = without_time(list(train(strategy, OBJECTIVE, DATA, seed=7)))
    reference = plain_loop(strategy, seed=7)
    assert [r["epoch"] for r in fast] == [1, 2, 3]
    for mine, theirs in zip(fast, reference, strict=True):
        for key in theirs:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key


def test_the_fast_loop_uses_fused_kernels_where_pytorch_has_them() -> None:
    model = OBJECTIVE.make_model()
    for optimizer, fused in [("sgd", True), ("adam", True), ("adamw", True), ("adagrad", True), ("rmsprop", None)]:
        schedule = Schedule(LRStrategy(optimizer, 0.01, "constant", 3), model.parameters(), 10)
        assert schedule.optimizer.defaults.get("fused") is fused, optimizer
        plain = Schedule(LRStrategy(optimizer, 0.01, "constant", 3), model.parameters(), 10, fused=False)
        assert not plain.optimizer.defaults.get("fused"), optimizer


def test_same_seed_same_curve_other_seed_other_curve() -> None:
    first = without_time(list(train(SGD_COSINE, OBJECTIVE, DATA, seed=3)))
    again = without_time(list(train(SGD_COSINE, OBJECTIVE, DATA, seed=3)))
    other = without_time(list(train(SGD_COSINE, OBJECTIVE, DATA, seed=4)))
    assert first == again
    assert first != other


def test_learns_and_records_the_lr_used() -> None:
    records = list(train(SGD_COSINE, OBJECTIVE, DATA, seed=0))
    assert records[-1].val_acc > 0.5  # 10 classes: chance is 0.1
    assert records[-1].train_loss < records[0].train_loss
    assert [r.lr for r in records] == pytest.approx([0.05, 0.05 * (0.01 + 0.99 * 0.75), 0.05 * (0.01 + 0.99 * 0.25)])
    assert all(r.lr == r.lr_end for r in records)  # an epoch schedule holds the LR within an epoch
    onecycle = LRStrategy(
        "adam",
        0.01,
        "onecycle",
        2,
        {},
        {"pct_start": 0.3, "div_factor": 10.0, "final_div_factor": 100.0, "anneal_strategy": "cos"},
    )
    first = next(iter(train(onecycle, OBJECTIVE, DATA, seed=0)))
    assert first.lr == pytest.approx(0.001) and first.lr_end > first.lr  # per batch: it rises within the epoch


def test_running_train_accuracy_is_measured_during_the_epoch() -> None:
    evaluated = next(iter(train(SGD_COSINE, OBJECTIVE, DATA, seed=1)))
    running = next(iter(train(SGD_COSINE, OBJECTIVE, DATA, seed=1, train_accuracy="running")))
    assert dataclasses.replace(running, train_acc=0.0, seconds=0.0) == dataclasses.replace(
        evaluated, train_acc=0.0, seconds=0.0
    )
    assert running.train_acc != evaluated.train_acc
    assert 0.0 <= running.train_acc <= 1.0


def test_a_too_high_lr_diverges_visibly() -> None:
    strategy = LRStrategy("sgd", 1e6, "constant", 2, {"momentum": 0.0})
    record = next(iter(train(strategy, OBJECTIVE, DATA, seed=0)))
    assert record.diverged
    assert not math.isfinite(record.train_loss)
