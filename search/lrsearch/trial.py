"""One trial: sample a strategy, train it, report every epoch, score the best feasible epoch."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import optuna

from lrsearch.definition import StudyDefinition
from lrsearch.objective import Objective, TrainingData
from lrsearch.publish import publish_trial
from lrsearch.records import EpochRecord
from lrsearch.scoring import EpochSelector
from lrsearch.storage import set_user_attrs
from lrsearch.training import steps_per_epoch, train

_logger = logging.getLogger(__name__)


def trial_seed(study_seed: int, trial_number: int) -> int:
    return (study_seed * 1_000_003 + trial_number) % 2**32


@dataclass
class TrialRunner:
    """The function Optuna calls for each trial of an lrsearch study."""

    definition: StudyDefinition
    objective: Objective
    data: TrainingData

    def __call__(self, trial: optuna.Trial) -> float:
        definition = self.definition
        strategy = definition.space.sample(trial, definition.epochs)
        # A retried trial keeps its seed (user attributes are copied to the retry).
        seed = int(trial.user_attrs.get("seed", trial_seed(definition.seed, trial.number)))
        set_user_attrs(
            trial,
            {
                "seed": seed,
                "strategy": strategy.describe(),
                "steps_per_epoch": steps_per_epoch(self.data, self.objective.batch_size),
                "device": str(self.data.train_inputs.device),
            },
        )

        selector = EpochSelector(definition.targets)
        history: list[dict[str, float]] = []
        stop_reason = f"trained all {definition.epochs} epochs"
        for record in train(
            strategy, self.objective, self.data, seed=seed, train_accuracy=definition.targets.train_accuracy
        ):
            history.append(record.as_dict())
            trial.set_user_attr("history", history)
            if record.diverged:
                stop_reason = f"diverged: loss became {record.train_loss} in epoch {record.epoch} (LR too high?)"
                if selector.chosen is None:
                    selector.add(record)
                break
            selector.add(record)
            trial.report(record.val_acc, record.epoch)
            if trial.should_prune():
                self._summarise(trial, selector, f"pruned after epoch {record.epoch}")
                publish_trial(trial, definition, complete=False)  # curves and notes for the dashboard
                raise optuna.TrialPruned(f"val_acc {record.val_acc:.4f} after epoch {record.epoch}")
            if selector.should_stop():
                stop_reason = (
                    f"stopped after epoch {record.epoch}: train accuracy above "
                    f"{definition.targets.max_train} for {selector.overfit_streak} epochs"
                )
                break
        chosen = self._summarise(trial, selector, stop_reason)
        for key, value in selector.constraints(chosen).items():
            trial.set_constraint(key, value)
        publish_trial(trial, definition, complete=True)  # curves and notes for the dashboard
        return chosen.val_acc

    @staticmethod
    def _summarise(trial: optuna.Trial, selector: EpochSelector, stop_reason: str) -> EpochRecord:
        chosen = selector.chosen
        assert chosen is not None, "a trial reports at least one epoch"
        summary = {
            "feasible": selector.feasible(chosen),
            "val_acc": chosen.val_acc,
            "train_acc": chosen.train_acc,
            "epoch": chosen.epoch,
            "stop_reason": stop_reason,
        }
        set_user_attrs(trial, summary)
        return chosen
