"""One trial: sample a strategy, train it, report every epoch, score the best feasible epoch."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import optuna

from lrsearch.store.batching import shared_reads, write_trial
from lrsearch.store.optuna_rdb import frozen_trial
from lrsearch.strategy.schedule import last_rise_epoch
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import WORKER_ATTR, TrialRecord, stored_seed
from lrsearch.study.scoring import EpochSelector
from lrsearch.train.loop import steps_per_epoch, train
from lrsearch.train.objective import Objective, TrainingData
from lrsearch.train.records import EpochRecord

_logger = logging.getLogger(__name__)

__all__ = ["TrialRunner", "trial_seed", "retry_seed", "WORKER_ATTR"]


def trial_seed(study_seed: int, trial_number: int) -> int:
    return (study_seed * 1_000_003 + trial_number) % 2**32


def retry_seed(trial: optuna.Trial, study_seed: int) -> int:
    """The trial's training seed: a retry keeps the seed of the trial it repeats (its user attributes are copied
    to it; if its worker died before recording one, the seed follows from the first attempt's number)."""
    stored = stored_seed(trial)
    if stored is not None:
        return stored
    # Read when the trial was made (a retry is made with `failed_trial`); else read it again.
    system_attrs = frozen_trial(trial).system_attrs
    return trial_seed(study_seed, int(system_attrs.get("failed_trial", trial.number)))


@dataclass
class TrialRunner:
    """The function Optuna calls for each trial of an lrsearch study."""

    definition: StudyDefinition
    objective: Objective
    data: TrainingData
    worker: str = ""  # recorded as the trial's user attribute `worker` (host:pid)
    # Called with the trial's record once its result is known, before it is told to Optuna (a finished trial
    # takes no more attributes or artifacts): the worker publishes notes there.
    publish: Callable[[optuna.Trial, StudyDefinition, TrialRecord], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        definition = self.definition
        with shared_reads(trial.study):  # one read of the trials for the whole sampling, one write of the params
            strategy = definition.space.sample(trial, definition.epochs)
        batches = steps_per_epoch(self.data, self.objective.batch_size)
        record = TrialRecord(
            number=trial.number,
            state="running",
            params=trial.params,
            strategy=strategy.describe(),
            seed=retry_seed(trial, definition.seed),
            worker=self.worker,
            device=str(self.data.train_inputs.device),
            steps_per_epoch=batches,
        )
        assert record.seed is not None
        last_rise = functools.cache(functools.partial(last_rise_epoch, strategy, batches))
        write_trial(trial, user_attrs=record.started_attrs())

        selector = EpochSelector(definition.targets)
        stop_reason = f"trained all {definition.epochs} epochs"
        for epoch in train(
            strategy, self.objective, self.data, seed=record.seed, train_accuracy=definition.targets.train_accuracy
        ):
            record = replace(record, history=(*record.history, epoch))
            if epoch.diverged:
                write_trial(trial, user_attrs=record.history_attrs())
                stop_reason = f"diverged: loss became {epoch.train_loss} in epoch {epoch.epoch} (LR too high?)"
                if selector.chosen is None:
                    selector.add(epoch)
                break
            selector.add(epoch)
            write_trial(trial, user_attrs=record.history_attrs(), report=(epoch.epoch, epoch.val_acc))
            if trial.should_prune():
                self._finish(trial, selector, record, f"pruned after epoch {epoch.epoch}", complete=False)
                raise optuna.TrialPruned(f"val_acc {epoch.val_acc:.4f} after epoch {epoch.epoch}")
            if selector.should_stop(last_rise):
                stop_reason = (
                    f"stopped after epoch {epoch.epoch}: train accuracy above "
                    f"{definition.targets.max_train} for {selector.overfit_streak} epochs, and the LR no longer rises"
                )
                break
        return self._finish(trial, selector, record, stop_reason, complete=True).val_acc

    def _finish(
        self,
        trial: optuna.Trial,
        selector: EpochSelector,
        record: TrialRecord,
        stop_reason: str,
        *,
        complete: bool,
    ) -> EpochRecord:
        """The trial's result in one write (summary, dashboard attributes, constraints), then its notes."""
        chosen = selector.chosen
        assert chosen is not None, "a trial reports at least one epoch"
        record = replace(
            record,
            state="complete" if complete else "pruned",
            value=chosen.val_acc if complete else None,
            chosen_epoch=chosen.epoch,
            val_acc=chosen.val_acc,
            train_acc=chosen.train_acc,
            feasible=selector.feasible(chosen),
            stop_reason=stop_reason,
        )
        write_trial(
            trial,
            user_attrs=record.result_attrs(),
            constraints=selector.constraints(chosen) if complete else None,
        )
        if self.publish is not None:
            self.publish(trial, self.definition, record)
        return chosen
