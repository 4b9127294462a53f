"""One trial: sample a strategy, train it, report every epoch, score the best feasible epoch."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import optuna

from lrsearch.store.batching import shared_reads, write_trial
from lrsearch.strategy.schedule import last_rise_epoch
from lrsearch.study.definition import StudyDefinition
from lrsearch.study.record import dashboard_attrs
from lrsearch.study.scoring import EpochSelector
from lrsearch.train.loop import steps_per_epoch, train
from lrsearch.train.objective import Objective, TrainingData
from lrsearch.train.records import EpochRecord

_logger = logging.getLogger(__name__)


WORKER_ATTR = "worker"  # trial user attribute: host:pid of the worker that ran it


def trial_seed(study_seed: int, trial_number: int) -> int:
    return (study_seed * 1_000_003 + trial_number) % 2**32


def retry_seed(trial: optuna.Trial, study_seed: int) -> int:
    """The trial's training seed: a retry keeps the seed of the trial it repeats (its user attributes are copied
    to it; if its worker died before recording one, the seed follows from the first attempt's number)."""
    stored = trial.user_attrs.get("seed")
    if stored is not None:
        return int(stored)
    # Read when the trial was made (a retry is made with `failed_trial`); else read it again.
    frozen = getattr(trial, "_cached_frozen_trial", None) or trial.storage.get_trial(trial._trial_id)
    system_attrs = frozen.system_attrs
    return trial_seed(study_seed, int(system_attrs.get("failed_trial", trial.number)))


@dataclass
class TrialRunner:
    """The function Optuna calls for each trial of an lrsearch study."""

    definition: StudyDefinition
    objective: Objective
    data: TrainingData
    worker: str = ""  # recorded as the trial's user attribute `worker` (host:pid)
    # Called once a trial's result is known, before it is told to Optuna: the worker publishes notes there.
    publish: Callable[[optuna.Trial, StudyDefinition, bool], None] | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        definition = self.definition
        with shared_reads(trial.study):  # one read of the trials for the whole sampling, one write of the params
            strategy = definition.space.sample(trial, definition.epochs)
        seed = retry_seed(trial, definition.seed)
        batches = steps_per_epoch(self.data, self.objective.batch_size)
        last_rise = functools.cache(functools.partial(last_rise_epoch, strategy, batches))
        started = {
            "seed": seed,
            "strategy": strategy.describe(),
            "steps_per_epoch": batches,
            "device": str(self.data.train_inputs.device),
        }
        write_trial(trial, user_attrs={WORKER_ATTR: self.worker, **started} if self.worker else started)

        selector = EpochSelector(definition.targets)
        history: list[dict[str, float]] = []
        stop_reason = f"trained all {definition.epochs} epochs"
        for record in train(
            strategy, self.objective, self.data, seed=seed, train_accuracy=definition.targets.train_accuracy
        ):
            history.append(record.as_dict())
            if record.diverged:
                write_trial(trial, user_attrs={"history": history})
                stop_reason = f"diverged: loss became {record.train_loss} in epoch {record.epoch} (LR too high?)"
                if selector.chosen is None:
                    selector.add(record)
                break
            selector.add(record)
            write_trial(trial, user_attrs={"history": history}, report=(record.epoch, record.val_acc))
            if trial.should_prune():
                self._finish(trial, selector, history, f"pruned after epoch {record.epoch}", complete=False)
                raise optuna.TrialPruned(f"val_acc {record.val_acc:.4f} after epoch {record.epoch}")
            if selector.should_stop(last_rise):
                stop_reason = (
                    f"stopped after epoch {record.epoch}: train accuracy above "
                    f"{definition.targets.max_train} for {selector.overfit_streak} epochs, and the LR no longer rises"
                )
                break
        return self._finish(trial, selector, history, stop_reason, complete=True).val_acc

    def _finish(
        self,
        trial: optuna.Trial,
        selector: EpochSelector,
        history: list[dict[str, float]],
        stop_reason: str,
        *,
        complete: bool,
    ) -> EpochRecord:
        """The trial's result in one write (summary, dashboard attributes, constraints), then its notes."""
        chosen = selector.chosen
        assert chosen is not None, "a trial reports at least one epoch"
        summary = {
            "feasible": selector.feasible(chosen),
            "val_acc": chosen.val_acc,
            "train_acc": chosen.train_acc,
            "epoch": chosen.epoch,
            "stop_reason": stop_reason,
        }
        write_trial(
            trial,
            user_attrs={**summary, **dashboard_attrs(summary, history, complete=complete)},
            constraints=selector.constraints(chosen) if complete else None,
        )
        if self.publish is not None:
            self.publish(trial, self.definition, complete)
        return chosen
