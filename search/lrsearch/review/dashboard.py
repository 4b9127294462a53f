"""`lrsearch dashboard`: optuna-dashboard on the study database, with the artifact folder workers write to.

optuna-dashboard has routes that change and delete studies and no authentication, so it binds 127.0.0.1 unless
told otherwise, and warns on stderr when it is. Before serving, the study notes are rewritten from the stored
trials, so the note naming the best feasible trial is right even if two workers finished trials at once.

optuna-dashboard 0.21 reads a trial's feasibility only from the system attribute `constraints`, a list (the format
before Optuna 5), and so showed every lrsearch trial as feasible. Storing that list beside Optuna 5's
`constraints:<key>` attributes is not an option: Optuna 5 reads both formats, under different keys, and would count
every constraint twice (TPE's infeasibility score, for one). So the dashboard served here is given the list when it
serializes a trial (`serving_constraints`); its plots then mark infeasible trials.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lrsearch.errors import LRSearchError
from lrsearch.review.publish import artifact_dir, refresh_study_note
from lrsearch.store.optuna_rdb import serving_constraints, study_id
from lrsearch.store.storage import open_storage
from lrsearch.store.urls import mask_url

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore

_logger = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def serve(
    storage_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifact_folder: str | None = None,
    echo: Echo = _stderr,
) -> None:
    """Serve optuna-dashboard until Ctrl-C."""
    from optuna_dashboard import run_server

    storage = open_storage(storage_url, must_exist=True)  # not a new, empty database for a mistyped URL
    if host not in LOOPBACK:
        echo(
            f"warning: binding {host}: optuna-dashboard has no authentication and its routes can change and "
            "delete studies; anyone who reaches this port can. Prefer 127.0.0.1 with an SSH tunnel "
            "(ssh -L 8080:127.0.0.1:8080 host) or a proxy that authenticates."
        )
    check_port(host, port)
    folder = artifact_dir(storage_url, artifact_folder)
    store = artifact_store(folder, echo)
    echo(f"lrsearch: optuna-dashboard on {mask_url(storage_url)}, artifacts: {folder if store else 'none'}")
    for name, number in refresh_notes(storage, echo):
        echo(f"  study '{name}': http://{_url_host(host)}:{port}/dashboard/studies/{number}")
    echo(f"open http://{_url_host(host)}:{port}/dashboard (Ctrl-C stops)")
    with serving_constraints():
        run_server(storage, host=host, port=port, artifact_store=store)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_port(host: str, port: int) -> None:
    """Fail early, with advice, when the address cannot be bound (the server's own error is a traceback)."""
    if not 0 < port < 65536:
        raise LRSearchError(f"--port {port} is not a TCP port; use 1-65535, e.g. 8080")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise LRSearchError(f"--host {host}: not an address of this machine ({e.strerror}); use 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as e:
            raise LRSearchError(
                f"cannot listen on {host}:{port}: {e.strerror}; is a dashboard already running there? "
                "Choose another --port"
            ) from None


def artifact_store(folder: Path | None, echo: Echo = _stderr) -> FileSystemArtifactStore | None:
    """The dashboard's view of the artifact folder; None (no artifacts shown) when there is none."""
    if folder is None:
        return None
    from optuna.artifacts import FileSystemArtifactStore

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        echo(f"warning: cannot make the artifact folder {folder} ({e.strerror}); no artifacts are shown")
        return None
    return FileSystemArtifactStore(folder)


def refresh_notes(storage: optuna.storages.BaseStorage, echo: Echo = _stderr) -> list[tuple[str, int]]:
    """Rewrite the note of every lrsearch study in the storage; returns (name, study id) of those studies."""
    from lrsearch.study.lifecycle import load, study_names

    studies = []
    for name in study_names(storage):
        try:
            study, definition = load(storage, name)
        except LRSearchError:
            continue  # not an lrsearch study: the dashboard shows it as it is
        try:
            refresh_study_note(study, definition)
        except Exception as e:  # noqa: BLE001 - a read-only database still deserves a dashboard
            echo(f"warning: could not update the note of study '{name}': {type(e).__name__}: {e}")
        studies.append((name, study_id(study)))
    return studies


__all__ = ["serve", "check_port", "artifact_store", "refresh_notes", "LOOPBACK"]
