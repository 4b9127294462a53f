"""The `lrsearch` command. Commands stay short and call the library; torch is imported only by commands that train."""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from lrsearch import settings
from lrsearch.errors import ConfigError, LRSearchError
from lrsearch.store.urls import DEFAULT_STORAGE, mask_url
from lrsearch.study.definition import PRUNERS, SAMPLERS, StudyDefinition

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
            click.ClickException(str(e)).show()
            sys.exit(e.exit_code)  # 1; 3: trials kept failing; 4: database unreachable (see lrsearch.errors)
        except KeyboardInterrupt:
            click.echo("interrupted: the running trial is queued to run again; `lrsearch start` resumes", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


storage_option = click.option(
    "--storage",
    envvar="LRSEARCH_STORAGE",
    default=DEFAULT_STORAGE,
    show_default=True,
    help="SQLAlchemy URL of the study database (env LRSEARCH_STORAGE).",
)
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


def _choices(names: Sequence[str], default: str) -> str:
    """E.g. `feasible (the default), median, halving, hyperband or none`."""
    listed = [f"{name} (the default)" if name == default else name for name in names]
    return ", ".join(listed[:-1]) + " or " + listed[-1]


def _definition_options(command: F) -> F:
    """The study-definition options shared by `start` and `create`: each overrides the study file's value."""
    options = [
        click.argument("study_file", required=False, type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--trials", type=int, help="Total finished trials the study should have (not 'more')."),
        click.option("--epochs", type=int, help="Epoch budget of each trial."),
        storage_option,
        click.option("--study-name", help="Study name (default: the study file's [study] name)."),
        click.option(
            "--sampler",
            metavar="[" + "|".join(SAMPLERS) + "]",
            help=_choices(list(SAMPLERS), StudyDefinition.sampler.name) + " (the study file's [sampler] name).",
        ),
        click.option(
            "--pruner",
            metavar="[" + "|".join(PRUNERS) + "]",
            help=_choices(list(PRUNERS), StudyDefinition.pruner.name) + " (the study file's [pruner] name).",
        ),
        click.option("--min-val", type=float, help="Feasible epochs reach at least this validation accuracy"),
        click.option("--max-train", type=float, help="Feasible epochs stay at or below this train accuracy"),
        click.option("--seed", type=int, help="Study seed (each trial's seed derives from it)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


data_dir_option = click.option(
    "--data-dir",
    envvar="LRSEARCH_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the objective's data, e.g. the folder holding MNIST/raw (env LRSEARCH_DATA_DIR).",
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1..."
)


@main.command()
@_definition_options
@data_dir_option
@device_option
@click.option(
    "--workers",
    envvar="LRSEARCH_WORKERS",
    default="auto",
    show_default=True,
    help="Worker processes on this host: a number, or auto (one per GPU, else one per CPU core with one "
    "thread each: the fastest way to use a CPU for small models). One worker runs in this process "
    "(env LRSEARCH_WORKERS).",
)
@click.option("--gpus", help="GPU ids, e.g. 0,1,2,3: --per-gpu workers per GPU, each pinned to it.")
@click.option("--per-gpu", type=int, default=1, show_default=True, help="Workers per GPU listed in --gpus.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="",
    metavar="[auto|local|ADDRESS]",
    help="Run the workers as Ray actors on a Ray cluster (pip install 'lrsearch[ray]'): auto (a running one), "
    "local (a new one on this host) or its ADDRESS; alone: Ray's default (RAY_ADDRESS, a cluster running here, "
    "else a new one). --per-gpu M: each worker reserves 1/M of a GPU.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the study file, the options, the workers, the storage, the objective and its data, print "
    "what would run, and stop: no trial runs and no study is created.",
)
@_errors_to_exit_codes
def start(
    study_file: Path | None,
    storage: str,
    data_dir: Path | None,
    device: str,
    workers: str | None,
    gpus: str | None,
    per_gpu: int,
    ray_address: str | None,
    dry_run: bool,
    **overrides: Any,
) -> None:
    """Create or resume a study and run it until it has --trials finished trials.

    Without STUDY_FILE, an existing study is resumed with its stored definition, and a new one uses the
    default study (studies/mnist.toml). With --workers or --gpus the trials run in several processes; more
    can join from any host with `lrsearch worker`.
    """
    from lrsearch.fleet.supervisor import plan_workers, spawn_held, stop_held
    from lrsearch.fleet.worker import pick_device
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import budget, create_or_resume

    settings.check_all()
    if ray_address is not None:
        _start_on_ray(storage, study_file, overrides, data_dir, (workers, gpus, per_gpu, device), ray_address, dry_run)
        return
    layout = (workers, gpus, per_gpu, device)
    plan_workers(*layout, remaining=sys.maxsize)  # a bad layout is refused before the database is touched
    if gpus is None:
        pick_device(device)  # a device this host does not have, before a study is made for it
    plan = _resolve(storage, study_file, overrides, data_dir=data_dir, check_data=True, check=dry_run)
    if dry_run:
        _echo_plan(storage, plan, layout)
        return
    definition, new = plan.definition, plan.study is None
    finished = 0 if new else budget(plan.study, definition.trials).finished
    specs = plan_workers(*layout, remaining=definition.trials - finished)
    in_process = len(specs) == 1 and specs[0].gpu is None
    # The workers of a new study start while it is checked: their imports overlap the check.
    held = spawn_held(storage, definition.name, specs, data_dir) if new and not in_process else []
    try:
        # A study is created only once its objective and its data are known to load: a bad module:attr or a
        # missing data folder leaves no empty study behind.
        loaded = _check_objective(definition, data_dir, check_data=True) if new else None
        study = create_or_resume(plan.db or open_storage(storage), definition)
    except BaseException:
        stop_held(held)
        raise
    del plan
    if in_process:
        _run_start(storage, study.study_name, definition.trials, specs[0].device, data_dir, loaded)
    else:
        _run_fleet(storage, study, definition.trials, data_dir, specs, data_ready=loaded is not None, held=held)


@dataclass(frozen=True)
class _Plan:
    """What `start` or `create` is about to do: the checked definition, and the study if it exists."""

    definition: Any  # StudyDefinition
    db: Any  # the opened storage; None for a new SQLite file, which is created only when the study is
    study: Any  # the stored optuna.Study, or None for a new study


def _resolve(
    storage: str,
    study_file: Path | None,
    overrides: dict[str, Any],
    *,
    data_dir: Path | None = None,
    check_data: bool = False,
    check: bool = True,
) -> _Plan:
    """Check everything that can be wrong before a study is written: the study file and the flags, a stored
    definition they must match, and for a new study its objective (and, for `start`, its data; `check` False:
    the caller checks them). A new SQLite database is not even created: a refused command leaves no file
    behind."""
    from lrsearch.store.storage import open_storage
    from lrsearch.store.urls import is_new_database
    from lrsearch.study.definition import default_study_file, load_study_file
    from lrsearch.study.lifecycle import check_resumable, load, study_names

    overrides["name"] = overrides.pop("study_name")
    base = load_study_file(study_file or default_study_file())
    problem: ConfigError | None = None
    try:
        definition = base.with_overrides(**overrides)
    except ConfigError as e:
        if study_file is not None:
            raise
        definition, problem = base, e  # the flags may still suit a stored study of that name: see below
    db = None if is_new_database(storage) else open_storage(storage)
    name = overrides["name"] or base.name
    study, stored = load(db, name) if db is not None and name in study_names(db) else (None, None)
    if stored is not None:
        if study_file is None:
            definition = stored.with_overrides(**overrides)  # resume with what is stored; the flags change it
        check_resumable(stored, definition)
    elif problem is not None:
        raise problem
    elif check:
        # A study is created only once its objective (and, for `start`, its data) is known to load: a bad
        # module:attr or a missing data folder leaves no empty study behind.
        _check_objective(definition, data_dir, check_data=check_data)
    return _Plan(definition, db, study)


def _check_objective(definition: Any, data_dir: Path | None, *, check_data: bool) -> tuple[Any, Any] | None:
    """The objective and (with `check_data`) its data on the CPU, loaded as a worker would: errors say what is
    wrong. What was loaded serves the worker that `start` runs in its own process."""
    from lrsearch.train.objective import load_data, load_objective

    objective = load_objective(definition.objective, definition.objective_options)
    if not check_data:
        return None
    import torch

    return objective, load_data(objective, definition.objective, torch.device("cpu"), data_dir)


def _echo_plan(storage: str, plan: _Plan, layout: tuple[str | None, str | None, int, str]) -> None:
    """`start --dry-run`: what would run, on stdout."""
    from lrsearch.fleet.supervisor import plan_workers
    from lrsearch.study.lifecycle import budget

    definition, finished = plan.definition, 0
    if plan.study is not None:
        finished = budget(plan.study, definition.trials).finished
    specs = plan_workers(*layout, remaining=definition.trials - finished)
    state = f"exists, {finished} of its trials finished" if plan.study is not None else "new, start would create it"
    click.echo(f"dry run: nothing was run or written. Study '{definition.name}' in {mask_url(storage)}: {state}")
    click.echo(f"{definition.trials} trials of {definition.epochs} epochs, objective {definition.objective}")
    click.echo(f"{len(specs)} worker{'s' * (len(specs) != 1)}: " + "; ".join(s.describe() for s in specs))
    click.echo("definition (every default written out):\n" + json.dumps(definition.to_table(), indent=2))


def _run_start(
    storage: str, study_name: str, total: int, device: str, data_dir: Path | None, loaded: tuple[Any, Any] | None
) -> None:
    from lrsearch.fleet.worker import run_worker
    from lrsearch.review.progress import Progress

    progress = Progress(total, started=time.monotonic())
    click.echo(f"lrsearch: study '{study_name}' in {mask_url(storage)}, {total} trials", err=True)
    run_worker(storage, study_name, device=device, data_dir=data_dir, on_trial=progress.trial_done, loaded=loaded)
    click.echo(progress.closing_line(), err=True)
    _echo_next_step(study_name, storage)


def _echo_next_step(study_name: str, storage: str) -> None:
    click.echo(f"see the result: lrsearch best --study-name {study_name} --storage {mask_url(storage)}", err=True)


def _run_fleet(
    storage: str, study: Any, total: int, data_dir: Path | None, specs: list[Any], *, data_ready: bool, held: Any
) -> None:
    from lrsearch.fleet.supervisor import run_fleet
    from lrsearch.review.progress import Progress

    progress = Progress(total, started=time.monotonic())
    click.echo(
        f"lrsearch: study '{study.study_name}' in {mask_url(storage)}, {total} trials, {len(specs)} workers", err=True
    )
    run_fleet(
        storage,
        study.study_name,
        specs,
        data_dir=data_dir,
        data_ready=data_ready,
        held=held,
        on_trial=progress.trial_done,
        echo=lambda line: click.echo(line, err=True),
    )
    click.echo(progress.closing_line(), err=True)
    _echo_next_step(study.study_name, storage)


def _start_on_ray(
    storage: str,
    study_file: Path | None,
    overrides: dict[str, Any],
    data_dir: Path | None,
    layout: tuple[str | None, str | None, int, str],
    address: str,
    dry_run: bool,
) -> None:
    """`start --ray`: the same checks and study as `start`, the workers as Ray actors on the cluster."""
    from lrsearch.fleet.ray_engine import check_layout, check_storage, plan_ray_workers, ray_cluster, run_ray_fleet
    from lrsearch.review.progress import Progress
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import budget, create_or_resume

    if address and Path(address).is_file():  # `--ray study.toml`: the option took the study file as its value
        raise ConfigError(f"--ray {address}: that is a file; give --ray after the study file, or give it a value")
    check_layout(*layout)  # a bad layout is refused before the database or the cluster is touched
    plan = _resolve(storage, study_file, overrides, data_dir=data_dir, check_data=True)
    definition = plan.definition
    with ray_cluster(address) as cluster:
        check_storage(storage, cluster)  # before a study is written
        if dry_run:
            finished = 0 if plan.study is None else budget(plan.study, definition.trials).finished
            planned = plan_ray_workers(*layout, remaining=definition.trials - finished, cluster=cluster)
            click.echo(f"dry run: nothing was run or written. Study '{definition.name}' in {mask_url(storage)}")
            click.echo(f"Ray cluster: {cluster.describe()}; {len(planned)} workers:")
            click.echo("\n".join(worker.describe() for worker in planned))
            return
        study = create_or_resume(plan.db or open_storage(storage), definition)
        remaining = definition.trials - budget(study, definition.trials).finished
        planned = plan_ray_workers(*layout, remaining=remaining, cluster=cluster)
        progress = Progress(definition.trials, started=time.monotonic())
        click.echo(
            f"lrsearch: study '{study.study_name}' in {mask_url(storage)}, {definition.trials} trials, "
            f"{len(planned)} workers on a Ray cluster of {cluster.describe()}",
            err=True,
        )
        run_ray_fleet(
            storage,
            study.study_name,
            planned,
            cluster,
            data_dir=data_dir,
            on_trial=progress.trial_done,
            echo=lambda line: click.echo(line, err=True),
        )
    click.echo(progress.closing_line(), err=True)
    _echo_next_step(study.study_name, storage)


@main.command()
@_definition_options
@_errors_to_exit_codes
def create(study_file: Path | None, storage: str, **overrides: Any) -> None:
    """Create the study (or check that it exists with the same definition) without running trials.

    For setups where the workers start on their own: `lrsearch create` once, then `lrsearch worker` anywhere.
    Running it again is harmless; --trials changes the budget of an existing study.
    """
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import budget, create_or_resume

    settings.check_all()
    plan = _resolve(storage, study_file, overrides)
    study = create_or_resume(plan.db or open_storage(storage), plan.definition)
    state, name = budget(study, plan.definition.trials), study.study_name
    click.echo(
        f"study '{name}' in {mask_url(storage)}: {state.finished}/{state.total} trials finished; run "
        f"workers with: lrsearch worker --study-name {name}",
        err=True,
    )


@main.command()
@storage_option
@study_name_option
@device_option
@data_dir_option
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="torch CPU threads of this worker (default: env LRSEARCH_TORCH_THREADS, else torch's own choice)",
)
@click.option("--quiet", is_flag=True, help="No line per trial (the workers of `start` run quiet).")
@click.option("--wait-for-go", is_flag=True, hidden=True, help="Import torch, then wait for 'go' on stdin (start).")
@_errors_to_exit_codes
def worker(
    storage: str,
    study_name: str | None,
    device: str,
    data_dir: Path | None,
    threads: int | None,
    quiet: bool,
    wait_for_go: bool,
) -> None:
    """Join a study from any host: run its trials until its budget is spent.

    The study definition (space, objective, sampler, pruner, targets, budget) is read from the storage; give
    the same --storage URL as the other workers (a PostgreSQL URL across hosts).
    """
    from lrsearch.fleet.worker import pick_device, run_worker, worker_id
    from lrsearch.review.progress import Progress
    from lrsearch.store.storage import open_storage
    from lrsearch.store.urls import require_database
    from lrsearch.study.lifecycle import budget, load, stored_total

    settings.check_all()
    if wait_for_go:  # started by `start` before the study exists: its slow imports now, then the study
        import torch._dynamo  # noqa: F401  # what torch.optim imports at the first step

        if sys.stdin.readline().strip() != "go":
            return  # `start` made no study (its pipe closed): nothing to do
    require_database(storage)  # a SQLite file must be there; a PostgreSQL server still starting is waited for
    pick_device(device)
    name = study_name or _study_name(open_storage(storage), None)
    progress = None if quiet else Progress(0, started=time.monotonic())
    if progress is not None:
        click.echo(f"lrsearch worker {worker_id()}: study '{name}' in {mask_url(storage)}", err=True)
    try:
        ran = run_worker(
            storage,
            name,
            device=device,
            data_dir=data_dir,
            threads=threads,
            on_trial=None if progress is None else _progress_with_total(progress),
        )
    except KeyboardInterrupt:
        if not quiet:
            click.echo("worker interrupted: its running trial is queued to run again", err=True)
        sys.exit(130)
    if not quiet:
        study = load(open_storage(storage), name)[0]
        state = budget(study, stored_total(study))
        trials_ran = f"{ran} trial{'s' * (ran != 1)}"
        click.echo(f"worker done: ran {trials_ran}; the study has {state.finished}/{state.total} finished", err=True)


def _progress_with_total(progress: Any) -> Callable[[Any, Any], None]:
    def on_trial(trial: Any, state: Any) -> None:
        progress.total = state.total  # the budget is the study's, read from the storage
        progress.trial_done(trial, state)

    return on_trial


def _study_name(db: Any, study_name: str | None) -> str:
    from lrsearch.study.lifecycle import study_names

    if study_name is None:
        names = study_names(db)
        if len(names) != 1:
            listed = ", ".join(names) or "-"
            raise ConfigError(f"give --study-name; the storage holds {len(names)} studies: {listed}")
        study_name = names[0]
    return study_name


def _open(storage: str, study_name: str | None) -> tuple[Any, Any]:
    from lrsearch.store.storage import open_storage
    from lrsearch.study.lifecycle import load

    db = open_storage(storage, must_exist=True)
    return load(db, _study_name(db, study_name))


@main.command()
@storage_option
@study_name_option
@json_option
@_errors_to_exit_codes
def best(storage: str, study_name: str | None, as_json: bool) -> None:
    """The best feasible strategy: epochs to train, its epoch table and the PyTorch code."""
    from lrsearch.review.results import best_summary, format_best

    summary = best_summary(*_open(storage, study_name))
    click.echo(json.dumps(summary, indent=2) if as_json else format_best(summary))


@main.command()
@storage_option
@study_name_option
@json_option
@_errors_to_exit_codes
def trials(storage: str, study_name: str | None, as_json: bool) -> None:
    """A line per trial: state, optimizer, scheduler, LR, feasibility, accuracies, chosen epoch."""
    from lrsearch.review.results import format_trials, trial_rows

    rows = trial_rows(_open(storage, study_name)[0])
    click.echo(json.dumps(rows, indent=2) if as_json else format_trials(rows))


@main.command()
@storage_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. The dashboard has no login and can delete studies.",
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="TCP port.")
@click.option(
    "--artifact-dir",
    envvar="LRSEARCH_ARTIFACT_DIR",
    help="Folder of the per-trial curve files (env LRSEARCH_ARTIFACT_DIR; `off`: none). Default: "
    "<database file>.artifacts beside a SQLite database, none otherwise.",
)
@_errors_to_exit_codes
def dashboard(storage: str, host: str, port: int, artifact_dir: str | None) -> None:
    """Serve optuna-dashboard on the study database: curves, notes, the best feasible trial per study."""
    from lrsearch.review.dashboard import serve

    serve(storage, host=host, port=port, artifact_folder=artifact_dir)


@main.command()
@storage_option
@study_name_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for index.html and the PNGs (default: lrsearch-report-<study name>).",
)
@_errors_to_exit_codes
def report(storage: str, study_name: str | None, out: Path | None) -> None:
    """Write a self-contained HTML report (opens offline) and its plots as PNG files."""
    import re

    from lrsearch.review.report import write_report

    study, definition = _open(storage, study_name)
    folder = out or Path("lrsearch-report-" + re.sub(r"[^\w.-]+", "-", study.study_name))
    index = write_report(study, definition, folder, storage_label=mask_url(storage))
    click.echo(f"report written: {index}")


@main.command()
@storage_option
@json_option
@_errors_to_exit_codes
def studies(storage: str, as_json: bool) -> None:
    """The studies in the storage, with their trial counts and best feasible value."""
    from lrsearch.review.results import study_rows
    from lrsearch.store.storage import open_storage

    rows = study_rows(open_storage(storage, must_exist=True))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    for row in rows if not as_json else []:
        best = "-" if row["best_val_acc"] is None else f"{row['best_val_acc']:.4f}"
        click.echo(f"{row['name']}: {row['finished']}/{row['trials']} trials finished, best feasible val {best}")
