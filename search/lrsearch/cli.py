"""The `lrsearch` command. Commands stay short and call the library; torch is imported only by commands that train."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from lrsearch.errors import ConfigError, LRSearchError
from lrsearch.storage import DEFAULT_STORAGE, mask_url

F = TypeVar("F", bound=Callable[..., Any])


def _errors_to_exit_codes(command: F) -> F:
    """A user-fixable error is a message and an exit code (2 for bad input, 1 otherwise), never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as e:
            raise click.UsageError(str(e)) from None
        except LRSearchError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: the running trial is queued to run again; `lrsearch start` resumes", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


storage_option = click.option(
    "--storage", envvar="LRSEARCH_STORAGE", default=DEFAULT_STORAGE, show_default=True,
    help="SQLAlchemy URL of the study database (env LRSEARCH_STORAGE).",
)  # fmt: skip
study_name_option = click.option(
    "--study-name", help="Study to read; may be left out when the storage holds a single study."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs instead of text.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrsearch")
def main() -> None:
    """Find the learning-rate strategy (optimizer, initial LR, LR scheduler) that makes a model train well."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import optuna  # light enough (no torch); its per-trial INFO lines would repeat our progress lines

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@main.command()
@click.argument("study_file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trials", type=int, help="Total finished trials the study should have (not 'more trials').")
@click.option("--epochs", type=int, help="Epoch budget of each trial.")
@storage_option
@click.option("--study-name", help="Study name (default: the study file's [study] name).")
@click.option("--sampler", help="tpe or random.")
@click.option("--pruner", help="median, halving, hyperband or none.")
@click.option("--min-val", type=float, help="Feasible epochs reach at least this validation accuracy.")
@click.option("--max-train", type=float, help="Feasible epochs stay at or below this training accuracy.")
@click.option("--seed", type=int, help="Study seed (each trial's seed derives from it).")
@click.option("--data-dir", envvar="LRSEARCH_DATA_DIR", type=click.Path(file_okay=False, path_type=Path),
              help="Folder with the objective's data, e.g. the folder holding MNIST/raw (env LRSEARCH_DATA_DIR).")  # fmt: skip
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1...")
@_errors_to_exit_codes
def start(study_file: Path | None, storage: str, data_dir: Path | None, device: str, **overrides: Any) -> None:
    """Create or resume a study and run it until it has --trials finished trials.

    Without STUDY_FILE, an existing study is resumed with its stored definition, and a new one uses the
    default study (studies/mnist.toml).
    """
    from lrsearch.definition import default_study_file, load_study_file
    from lrsearch.storage import open_storage
    from lrsearch.study import create_or_resume, load, study_names

    overrides["name"] = overrides.pop("study_name")
    db = open_storage(storage)
    base = load_study_file(study_file or default_study_file())
    name = overrides["name"] or base.name
    if study_file is None and name in study_names(db):
        base = load(db, name)[1]  # resume with what is stored; only the flags given change it
    definition = base.with_overrides(**overrides)
    study = create_or_resume(db, definition)
    _run_start(storage, study.study_name, definition.trials, device, data_dir)


def _run_start(storage: str, study_name: str, total: int, device: str, data_dir: Path | None) -> None:
    from lrsearch.progress import Progress
    from lrsearch.worker import run_worker

    progress = Progress(total, started=time.monotonic())
    click.echo(f"lrsearch: study '{study_name}' in {mask_url(storage)}, {total} trials", err=True)
    run_worker(storage, study_name, device=device, data_dir=data_dir, on_trial=progress.trial_done)
    click.echo(progress.closing_line(), err=True)
    click.echo(f"see the result: lrsearch best --study-name {study_name} --storage {mask_url(storage)}", err=True)


def _open(storage: str, study_name: str | None) -> tuple[Any, Any]:
    from lrsearch.storage import open_storage
    from lrsearch.study import load, study_names

    db = open_storage(storage)
    if study_name is None:
        names = study_names(db)
        if len(names) != 1:
            raise ConfigError(f"give --study-name; the storage holds {len(names)} studies: {', '.join(names) or '-'}")
        study_name = names[0]
    return load(db, study_name)


@main.command()
@storage_option
@study_name_option
@json_option
@_errors_to_exit_codes
def best(storage: str, study_name: str | None, as_json: bool) -> None:
    """The best feasible strategy: epochs to train, its epoch table and the PyTorch code."""
    from lrsearch.results import best_summary, format_best

    summary = best_summary(*_open(storage, study_name))
    click.echo(json.dumps(summary, indent=2) if as_json else format_best(summary))


@main.command()
@storage_option
@study_name_option
@json_option
@_errors_to_exit_codes
def trials(storage: str, study_name: str | None, as_json: bool) -> None:
    """A line per trial: state, optimizer, scheduler, LR, feasibility, accuracies, chosen epoch."""
    from lrsearch.results import format_trials, trial_rows

    rows = trial_rows(_open(storage, study_name)[0])
    click.echo(json.dumps(rows, indent=2) if as_json else format_trials(rows))


@main.command()
@storage_option
@json_option
@_errors_to_exit_codes
def studies(storage: str, as_json: bool) -> None:
    """The studies in the storage, with their trial counts and best feasible value."""
    from lrsearch.results import study_rows
    from lrsearch.storage import open_storage

    rows = study_rows(open_storage(storage))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    for row in rows if not as_json else []:
        best = "-" if row["best_val_acc"] is None else f"{row['best_val_acc']:.4f}"
        click.echo(f"{row['name']}: {row['finished']}/{row['trials']} trials finished, best feasible val {best}")
