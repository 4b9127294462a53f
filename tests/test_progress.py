from __future__ import annotations

import io
import sys

import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from lrsearch.errors import ConfigError
from lrsearch.review.progress import Progress, duration
from lrsearch.study.lifecycle import Budget


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(
    number: int, state: TrialState = TrialState.COMPLETE, *, val: float = 0.9, feasible: bool = True
) -> FrozenTrial:
    attrs = {
        "val_acc": val,
        "train_acc": 0.93,
        "epoch": 3,
        "feasible": feasible,
        "strategy": "SGD(lr=0.1) + x",
    }
    if state == TrialState.FAIL:
        attrs = {"stop_reason": "failed: RuntimeError: boom"}
    frozen = create_trial(state=state, value=val if state == TrialState.COMPLETE else None, user_attrs=attrs)
    frozen.number = number
    return frozen


def budget(finished: int, total: int) -> Budget:
    return Budget(finished=finished, running=0, waiting=0, total=total)


def test_log_lines_when_not_a_terminal_are_periodic_plus_events() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(6, started=clock.now, out=out, interval=30, clock=clock)
    assert progress.interactive is False
    progress.trial_done(trial(0, val=0.91), budget(1, 6))  # first line, and a new best
    clock.now += 5
    progress.trial_done(trial(1, TrialState.PRUNED, feasible=False), budget(2, 6))  # quiet: within 30 s
    clock.now += 5
    progress.trial_done(trial(2, val=0.80), budget(3, 6))  # quiet: no better
    progress.trial_done(trial(3, TrialState.FAIL), budget(4, 6))  # failures are always told
    clock.now += 31
    progress.trial_done(trial(4, val=0.85), budget(5, 6))  # 30 s passed
    progress.trial_done(trial(5, val=0.70), budget(6, 6))  # the last one
    lines = out.getvalue().splitlines()
    assert [line.split("]")[0] for line in lines] == ["[1/6", "[4/6", "[5/6", "[6/6"]
    assert lines[0].startswith("[1/6] trial 0 complete val 0.9100 at epoch 3 (feasible): SGD(lr=0.1) + x | ")
    assert lines[0].endswith("| pruned 0, failed 0, best feasible 0.9100 (trial 0), 0s elapsed, ETA ?")
    assert "failed: RuntimeError: boom" in lines[1] and "failed 1" in lines[1]
    assert "pruned 1, failed 1, best feasible 0.9100 (trial 0), 41s elapsed" in lines[2]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # plain text for CI logs
    assert progress.closing_line() == "done: pruned 1, failed 1, best feasible 0.9100 (trial 0), 41s elapsed"


def test_interval_zero_prints_every_trial() -> None:
    out = io.StringIO()
    progress = Progress(3, out=out, interval=0)
    for n in range(3):
        progress.trial_done(trial(n, val=0.5), budget(n + 1, 3))
    assert len(out.getvalue().splitlines()) == 3


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LRSEARCH_PROGRESS_INTERVAL", "7.5")
    assert Progress(3, out=io.StringIO()).interval == 7.5
    monkeypatch.setenv("LRSEARCH_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ConfigError, match="LRSEARCH_PROGRESS_INTERVAL='soon'"):
        Progress(3, out=io.StringIO())


def test_a_terminal_gets_a_bar_redrawn_below_the_trial_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    out, clock = Terminal(), Clock()
    progress = Progress(4, started=clock.now, out=out, clock=clock)
    assert progress.interactive is True
    clock.now += 10
    progress.trial_done(trial(0, val=0.92), budget(1, 4))
    clock.now += 10
    progress.trial_done(trial(1, TrialState.PRUNED, feasible=False), budget(2, 4))
    text = out.getvalue()
    assert "[1/4] trial 0 complete val 0.9200 at epoch 3 (feasible): SGD(lr=0.1) + x\n" in text
    # the bar: done / N, pruned, failed, best feasible so far, elapsed, ETA (2 trials in 20 s, 2 to go)
    assert text.endswith(
        "\r\x1b[K[############------------] 2/4 trials, pruned 1, failed 0, best feasible 0.9200 "
        "(trial 0), 20s elapsed, ETA 20s"
    )
    progress.echo("a message from elsewhere")
    assert out.getvalue().endswith(
        "\r\x1b[Ka message from elsewhere\n\r\x1b[K[############------------] 2/4 trials, "
        "pruned 1, failed 0, best feasible 0.9200 (trial 0), 20s elapsed, ETA 20s"
    )
    closing = progress.closing_line()
    assert out.getvalue().endswith("ETA 20s\r\x1b[K")  # the bar is wiped before the closing line is printed
    assert closing == "done: pruned 1, failed 0, best feasible 0.9200 (trial 0), 20s elapsed"


def test_the_bar_never_wraps_on_a_narrow_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    out = Terminal()
    Progress(4, out=out).trial_done(trial(0), budget(1, 4))
    bar = out.getvalue().rsplit("\r\x1b[K", 1)[1]
    assert bar.startswith("[######------------------] 1/4") and len(bar) == 39


def test_eta_counts_trials_finished_since_this_process_started() -> None:
    clock = Clock()
    progress = Progress(10, started=clock.now, out=io.StringIO(), interval=0, clock=clock)
    assert progress.eta() is None  # nothing finished yet
    clock.now += 30
    progress.trial_done(trial(4), budget(5, 10))  # resumed: 4 were done before this process
    assert progress.eta() == pytest.approx(5 * 30)
    clock.now += 30
    progress.trial_done(trial(5), budget(7, 10))  # another worker finished one too
    assert progress.eta() == pytest.approx(3 * 60 / 3)


def test_default_stream_is_stderr_at_creation(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress(1, interval=0)
    assert progress.out is sys.stderr
    progress.trial_done(trial(0), budget(1, 1))
    assert "[1/1] trial 0 complete" in capsys.readouterr().err


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600 * 2 + 180, "2h03m")])
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
