"""docker/k8s and docker/slurm: no cluster runs here, so check what can be checked without one.

The Kubernetes manifests validate against the Kubernetes schemas (strict: an unknown key is an error), every
lrsearch command line in them is one the real CLI accepts, and they agree with each other (study name, Secret,
GPU requests, the exit codes the worker really uses). The Slurm array script runs for real, as Slurm would run
its tasks (several at once, then a requeued one), against the real PostgreSQL with real worker processes.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import write_study
from test_fleet import (
    _STARTED,
    GRACE,
    _no_leftover_processes,
    assert_exact,
    finish,
    mid_trial,
    parse_command_line,
    process_env,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "docker" / "k8s"
SBATCH = REPO / "docker" / "slurm" / "lrsearch-array.sbatch"
STUDY = "mnist-mlp"

__all__ = ["process_env", "_no_leftover_processes"]  # fixtures used here

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


# --- Kubernetes ------------------------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource under docker/k8s, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for resource in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[(resource["kind"], resource["metadata"]["name"])] = resource
    return found


def validation_errors(resource: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as e:
        return str(e.message)
    return None


def containers(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def lrsearch_argv(container: dict[str, Any]) -> list[str]:
    """The lrsearch command line a container runs (also inside a `bash -c` loop)."""
    command = container["command"]
    if command[0] == "bash":
        words = shlex.split(command[-1])
        command = words[words.index("lrsearch") : words.index("|")] if "|" in words else words
    assert command[0] == "lrsearch", command
    return list(command[1:])


def test_every_manifest_validates_against_the_kubernetes_schemas() -> None:
    found = manifests()
    assert {kind for kind, _ in found} >= {"Secret", "Job", "Deployment", "Service", "PersistentVolumeClaim"}
    for key, resource in found.items():
        assert validation_errors(resource) is None, (key, validation_errors(resource))


def test_the_schema_check_rejects_a_wrong_key() -> None:
    job = manifests()[("Job", "lrsearch-workers")]
    broken = {**job, "spec": {**job["spec"], "paralelism": 4}}
    assert "paralelism" in (validation_errors(broken) or "")


def lrsearch_containers() -> list[dict[str, Any]]:
    pods = [r for r in manifests().values() if "template" in r.get("spec", {})]
    return [c for r in pods for c in containers(r) if c["image"].startswith("lrsearch")]


def test_every_lrsearch_command_line_is_one_the_cli_accepts() -> None:
    commands = [lrsearch_argv(c) for c in lrsearch_containers()]
    assert {c[0] for c in commands} >= {"create", "worker", "studies", "dashboard"}
    for argv in commands:
        parse_command_line(argv)  # raises click.UsageError on an option or value the CLI does not take


def test_the_create_job_and_the_workers_name_the_same_study_in_the_same_database() -> None:
    found = manifests()
    create = parse_command_line(lrsearch_argv(containers(found[("Job", "lrsearch-create-study")])[0]))
    study_file = REPO / "studies" / Path(create.params["study_file"]).name  # the image's copy of studies/
    assert study_file.is_file() and f'name = "{create.params["study_name"]}"' in study_file.read_text()
    workers = found[("Job", "lrsearch-workers")]
    wait, worker = containers(workers)
    assert f'"{create.params["study_name"]}"' in wait["command"][-1]
    assert parse_command_line(lrsearch_argv(worker)).params["study_name"] == create.params["study_name"]
    secret = found[("Secret", "lrsearch-storage")]["stringData"]
    for container in lrsearch_containers():
        assert {"secretRef": {"name": "lrsearch-storage"}} in container["envFrom"]
    import sqlalchemy

    url = sqlalchemy.engine.make_url(secret["LRSEARCH_STORAGE"])
    service = found[("Service", "lrsearch-postgres")]
    assert url.host == service["metadata"]["name"] and url.port == service["spec"]["ports"][0]["port"]
    assert url.password == secret["POSTGRES_PASSWORD"]


def test_the_workers_are_an_indexed_job_of_gpu_pods_that_stop_cleanly() -> None:
    workers = manifests()[("Job", "lrsearch-workers")]
    spec = workers["spec"]
    assert spec["completionMode"] == "Indexed" and spec["parallelism"] == spec["completions"] >= 1
    pod = spec["template"]["spec"]
    [worker] = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert parse_command_line(lrsearch_argv(worker)).params["device"] == "cuda"
    assert pod["terminationGracePeriodSeconds"] >= 60  # time to fail and queue the running trial on SIGTERM
    env = {e["name"] for e in worker.get("env", [])}
    code_text = "\n".join(p.read_text(encoding="utf-8") for p in (REPO / "search" / "lrsearch").rglob("*.py"))
    assert all(f'"{name}"' in code_text for name in env), env


def test_the_dashboard_is_reachable_only_inside_the_cluster() -> None:
    found = manifests()
    service = found[("Service", "lrsearch-dashboard")]
    assert service["spec"]["type"] == "ClusterIP"
    [dashboard] = containers(found[("Deployment", "lrsearch-dashboard")])
    assert parse_command_line(lrsearch_argv(dashboard)).params["port"] == dashboard["ports"][0]["containerPort"]


# --- Slurm -----------------------------------------------------------------------------------------------


def sbatch_options() -> dict[str, str]:
    options = {}
    for line in SBATCH.read_text(encoding="utf-8").splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value
    return options


def test_the_array_script_asks_for_one_gpu_per_task_and_may_be_requeued() -> None:
    options = sbatch_options()
    assert options["gres"] == "gpu:1" and "array" in options and "requeue" in options
    assert options["signal"].startswith("B:TERM@")  # the worker (exec'd: the batch shell) stops cleanly
    assert subprocess.run(["bash", "-n", str(SBATCH)], check=False).returncode == 0


def array_task(env: dict[str, str], task: int) -> subprocess.Popen[str]:
    """The script as Slurm runs an array task: bash, the job's environment, SLURM_* variables."""
    slurm = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "4242", "SLURM_CPUS_PER_TASK": "1"}
    task = subprocess.Popen(
        ["bash", str(SBATCH)], env={**env, **slurm}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _STARTED.append(task)  # stopped after the test, should it fail half-way
    return task


@pytest.fixture
def slurm_env(tmp_path: Path, process_env: dict[str, str], pg_url: str) -> dict[str, str]:
    study = write_study(tmp_path, '[pruner]\nname = "none"\n', trials=6, epochs=2)
    bin_dir = str(Path(sys.executable).parent)  # where `lrsearch` is installed
    return dict(
        process_env,
        PATH=f"{bin_dir}{os.pathsep}{process_env['PATH']}",
        LRSEARCH_STORAGE=pg_url,
        STUDY_FILE=str(study),
        STUDY_NAME="synthetic",
        TRIALS="6",
        LRSEARCH_DEVICE="cpu",
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_array_tasks_started_together_spend_the_exact_budget(slurm_env: dict[str, str], pg_url: str) -> None:
    tasks = [array_task(slurm_env, i) for i in range(3)]  # all create-or-check the study at the same moment
    results = [finish(task) for task in tasks]
    assert [code for code, _ in results] == [0, 0, 0], "\n".join(err for _, err in results)
    trials = assert_exact(pg_url, 6)
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the tasks shared the work
    requeued = array_task(slurm_env, 1)  # a task requeued after the study ended: checks it, joins, exits 0
    code, err = finish(requeued)
    assert code == 0, err
    assert_exact(pg_url, 6)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_task_stopped_by_slurm_queues_its_trial_and_a_requeued_task_finishes_it(
    slurm_env: dict[str, str], pg_url: str
) -> None:
    body = '[objective]\nname = "synthetic_objective:SlowSynthetic"\nsamples = 4000\n\n[pruner]\nname = "none"\n'
    study = write_study(Path(slurm_env["STUDY_FILE"]).parent, body, trials=3, epochs=2)
    env = dict(slurm_env, STUDY_FILE=str(study), TRIALS="3")
    task = array_task(env, 0)
    wait_for(lambda: mid_trial(pg_url), 120, "a trial to run")
    task.send_signal(signal.SIGTERM)  # what `--signal=B:TERM@90` or a preemption sends to the batch shell
    code, err = finish(task)
    assert code != 0 and "queued to run again" in err, err
    requeued = array_task(env, 0)  # Slurm runs the same script again
    code, err = finish(requeued, timeout=120 + GRACE)
    assert code == 0, err
    assert_exact(pg_url, 3)
