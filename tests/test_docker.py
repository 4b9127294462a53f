"""docker/: no Docker engine runs here, so check what can be checked without one.

The compose file parses (docker-compose config), every lrsearch service runs a command line that the CLI
accepts, the environment names are ones the code reads, the study the services name exists, and the
Dockerfile builds from files that exist, on a CUDA PyTorch image, with the PostgreSQL extra.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from test_fleet import parse_command_line

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE_VARIABLES = ("STUDY_FILE", "STUDY_NAME", "TRIALS", "POSTGRES_PASSWORD", "DASHBOARD_PORT")


def compose_config(**variables: str) -> dict[str, Any]:
    """The compose file as docker-compose resolves it (anchors merged, ${...} substituted)."""
    yaml = pytest.importorskip("yaml")
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; `make system-deps`)")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES} | variables
    result = subprocess.run(
        [binary, "-f", str(DOCKER / "compose.yaml"), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    return config


def lrsearch_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in config["services"].items() if s.get("image", "").startswith("lrsearch")}


def code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "search" / "lrsearch").rglob("*.py"))


def test_the_compose_file_is_valid() -> None:
    compose_config()  # `config` fails on a file that does not parse or breaks the compose schema


def test_every_service_command_is_an_lrsearch_command_line() -> None:
    services = lrsearch_services(compose_config())
    assert {"create", "dashboard"} <= services.keys()
    for name, service in services.items():
        command = service["command"]
        assert command[0] == "lrsearch", name
        parse_command_line(command[1:])  # raises click.UsageError on an option or value the CLI does not take
    assert services["create"]["command"][1] == "create"
    assert services["dashboard"]["command"][1] == "dashboard"


def test_the_workers_run_the_created_study_one_per_gpu() -> None:
    config = compose_config()
    services = lrsearch_services(config)
    create = parse_command_line(services["create"]["command"][1:])
    study_file = REPO / "studies" / Path(create.params["study_file"]).name  # mounted at /studies
    stored_name = tomllib.loads(study_file.read_text(encoding="utf-8"))["study"]["name"]
    assert stored_name == create.params["study_name"] == "mnist-mlp"
    workers = {name: s for name, s in services.items() if s["command"][1] == "worker"}
    assert len(workers) >= 2
    gpus = []
    for service in workers.values():
        worker = parse_command_line(service["command"][1:])
        assert worker.params["study_name"] == create.params["study_name"] and worker.params["device"] == "cuda"
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and len(device["device_ids"]) == 1
        gpus.append(device["device_ids"][0])
        assert service["depends_on"]["create"]["condition"] == "service_completed_successfully"
    assert len(set(gpus)) == len(gpus), "two workers pinned to one GPU"


def test_compose_settings_reach_the_commands() -> None:
    services = lrsearch_services(compose_config(STUDY_NAME="smoke", STUDY_FILE="smoke.toml", TRIALS="7"))
    create = parse_command_line(services["create"]["command"][1:])
    assert create.params["study_name"] == "smoke" and create.params["trials"] == 7
    assert str(create.params["study_file"]) == "/studies/smoke.toml"
    workers = [parse_command_line(s["command"][1:]) for s in services.values() if s["command"][1] == "worker"]
    assert workers and {w.params["study_name"] for w in workers} == {"smoke"}


def test_postgres_is_healthy_before_the_study_is_created() -> None:
    config = compose_config(POSTGRES_PASSWORD="s3cret")
    postgres = config["services"]["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    services = lrsearch_services(config)
    assert services["create"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in services.values():
        url = sqlalchemy.engine.make_url(service["environment"]["LRSEARCH_STORAGE"])
        assert url.drivername == "postgresql+psycopg2" and url.host == "postgres"
        assert url.username == postgres["environment"]["POSTGRES_USER"] and url.password == "s3cret"
        assert url.database == postgres["environment"]["POSTGRES_DB"]


def test_environment_names_are_read_by_the_code() -> None:
    services = lrsearch_services(compose_config())
    code = code_text()
    dockerfile = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    names = {n for s in services.values() for n in s["environment"]} | set(re.findall(r"\bLRSEARCH_\w+", dockerfile))
    assert {"LRSEARCH_STORAGE", "LRSEARCH_HEARTBEAT_INTERVAL", "LRSEARCH_HEARTBEAT_GRACE"} <= names
    for name in names:
        assert f'"{name}"' in code, f"{name} is set in docker/ but lrsearch never reads it"
    data_dir = re.search(r"LRSEARCH_DATA_DIR=(\S+)", dockerfile)
    assert data_dir is not None
    assert {s["environment"]["LRSEARCH_DATA_DIR"] for s in services.values()} == {data_dir.group(1)}


def test_the_dockerfile_uses_cuda_torch_and_existing_files() -> None:
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
    assert base is not None and base.group(1).startswith("pytorch/pytorch:") and "cuda" in base.group(1)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
    extra = re.search(r'pip install "\.\[(\w+)\]"', text)
    assert extra is not None
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert any("psycopg2" in r for r in pyproject["project"]["optional-dependencies"][extra.group(1)])
