"""Queueing a failed trial again: a WAITING copy with its parameters and training seed, and nothing of its results.

Optuna's RetryHeartbeatStaleTrialCallback gives the copy every user and system attribute of the failed attempt
(its history, stop_reason, feasibility, constraints), which the dashboard and the reports would show as the
retry's until the retry overwrote them. Here the copy keeps only:

- user attribute `seed`: a retry trains with the seed of the trial it repeats (lrsearch.study.runner.retry_seed);
- Optuna's retry bookkeeping, system attributes `failed_trial` (the first attempt's number) and `retry_history`
  (every earlier attempt: the budget counts a failed trial named there as not finished);
- `lrsearch:interrupted`: the attempts stopped by SIGINT/SIGTERM. An interruption is not the trial's fault, so
  those attempts do not count against the `max_retry` retries of a trial whose worker died.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

MAX_RETRY = 2  # a trial whose worker died is run again at most this often (interruptions not counted)
KEPT_USER_ATTRS = ("seed",)
INTERRUPTED_ATTR = "lrsearch:interrupted"


class RetryCopy:
    """The heartbeat-stale-trial callback of lrsearch's storage, also called by a worker that is stopped.

    With `interrupted`, the failed attempt was stopped by a signal: it is queued again whatever `max_retry`.
    """

    def __init__(self, max_retry: int | None = MAX_RETRY, *, interrupted: bool = False) -> None:
        self.max_retry, self.interrupted = max_retry, interrupted

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        import optuna

        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        interrupted = [*trial.system_attrs.get(INTERRUPTED_ATTR, []), *([trial.number] if self.interrupted else [])]
        if not self.interrupted and self.max_retry is not None and len(history) - len(interrupted) > self.max_retry:
            return
        system_attrs = {"failed_trial": trial.system_attrs.get("failed_trial", trial.number), "retry_history": history}
        if interrupted:
            system_attrs[INTERRUPTED_ATTR] = interrupted
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={key: trial.user_attrs[key] for key in KEPT_USER_ATTRS if key in trial.user_attrs},
                system_attrs=system_attrs,
            )
        )


__all__ = ["RetryCopy", "MAX_RETRY", "KEPT_USER_ATTRS", "INTERRUPTED_ATTR"]
