"""`lrsearch start --ray`: the workers as Ray actors on a real local Ray cluster.

The quick tests check the planning, the refusals and the actor's restart policy (run without Ray). The slow
ones start one Ray head for the module (2 CPUs, 2 GPUs declared as resources: there is no real GPU, so the
workers' `--device auto` trains on the CPU while their actors still reserve GPU shares) and run `lrsearch start
--ray ADDRESS` as users do, on the synthetic objective: the exact budget, kill -9 of a worker and of an actor,
Ctrl-C.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from optuna.trial import FrozenTrial, TrialState

from conftest import TESTS, write_study
from lrsearch.cli import main
from lrsearch.errors import ConfigError
from lrsearch.fleet.ray_actor import QUICK_DEATHS, WorkerProcess
from lrsearch.fleet.ray_engine import (
    INSTALL_HINT,
    Cluster,
    Node,
    absolute_url,
    check_layout,
    check_storage,
    forwarded_env,
    plan_ray_workers,
)
from lrsearch.fleet.supervisor import WorkerSpec
from test_fleet import (
    SLOW,
    _free_port,
    _no_leftover_processes,
    assert_exact,
    count,
    finish,
    lrsearch_process,
    mid_trial,
    process_env,
    read_trials,
    wait_for,
)

__all__ = ["process_env", "_no_leftover_processes"]  # fixtures used here

# Our head and its clients alike, whether or not this machine holds a Ray token (~/.ray/auth_token, which Ray uses
# for a new head but not for a client unless told).
NO_RAY_TOKEN = {"RAY_AUTH_MODE": "disabled"}
GPU_CLUSTER = Cluster((Node("a", "10.0.0.1", 8.0, 2.0), Node("b", "10.0.0.2", 8.0, 2.0)), "a")
CPU_CLUSTER = Cluster((Node("a", "10.0.0.1", 8.0, 0.0), Node("b", "10.0.0.2", 4.0, 0.0)), "a")


# --- planning and refusals (no Ray needed) ------------------------------------------------------------


def test_gpu_workers_reserve_a_fraction_of_a_gpu() -> None:
    planned = plan_ray_workers("auto", None, 2, "auto", 100, GPU_CLUSTER)
    assert len(planned) == 8  # 2 per GPU of the cluster
    assert {(w.num_gpus, w.num_cpus, w.spec.device, w.spec.gpu) for w in planned} == {(0.5, 1.0, "auto", None)}
    three = plan_ray_workers("3", None, 3, "cuda", 100, GPU_CLUSTER)
    assert [w.num_gpus for w in three] == [0.3333] * 3 and {w.spec.device for w in three} == {"cuda"}
    assert len(plan_ray_workers("auto", None, 2, "auto", 5, GPU_CLUSTER)) == 5  # no more than trials left
    assert "worker 1 reserving 0.5 GPU and 1 CPU (device auto, 1 thread)" == planned[1].describe()


def test_cpu_workers_reserve_the_cpus_of_their_threads() -> None:
    auto = plan_ray_workers("auto", None, 1, "auto", 100, CPU_CLUSTER)
    assert len(auto) == 12 and {(w.num_cpus, w.num_gpus, w.spec.threads) for w in auto} == {(1.0, 0.0, 1)}
    three = plan_ray_workers("3", None, 1, "cpu", 100, CPU_CLUSTER)
    assert {(w.num_cpus, w.spec.threads, w.spec.device) for w in three} == {(4.0, 4, "cpu")}
    one = plan_ray_workers("1", None, 1, "cpu", 100, CPU_CLUSTER)
    assert one[0].spec.threads == 8  # 12 CPUs in all, but one worker runs on one node
    on_gpus = plan_ray_workers("2", None, 1, "cpu", 100, GPU_CLUSTER)
    assert {w.num_gpus for w in on_gpus} == {0.0}  # --device cpu on a GPU cluster reserves no GPU


@pytest.mark.parametrize(
    ("workers", "gpus", "per_gpu", "device", "cluster", "message"),
    [
        ("auto", "0,1", 1, "auto", GPU_CLUSTER, "--gpus 0,1 names GPUs of this host; with --ray"),
        ("auto", None, 0, "auto", GPU_CLUSTER, "--per-gpu 0: give 1 or more"),
        ("auto", None, 1, "cuda:1", GPU_CLUSTER, "--device cuda:1 with --ray"),
        ("auto", None, 2, "cpu", GPU_CLUSTER, "--per-gpu 2 with --device cpu"),
        ("auto", None, 1, "cuda", CPU_CLUSTER, r"--device cuda: the Ray cluster has no GPU \(2 nodes, 12 CPUs"),
        ("auto", None, 2, "auto", CPU_CLUSTER, "--per-gpu 2: the Ray cluster has no GPU"),
        ("none", None, 1, "auto", CPU_CLUSTER, "--workers 'none'"),
    ],
)
def test_bad_ray_layouts_say_what_is_wrong(
    workers: str, gpus: str | None, per_gpu: int, device: str, cluster: Cluster, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_ray_workers(workers, gpus, per_gpu, device, 100, cluster)


def test_sqlite_is_refused_when_the_cluster_has_other_nodes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    with pytest.raises(
        ConfigError, match=r"SQLite file on this host, but the Ray cluster has other nodes \(10.0.0.2\)"
    ):
        check_storage(url, GPU_CLUSTER)
    with pytest.raises(ConfigError, match="PostgreSQL database that every node reaches"):
        check_storage(url, Cluster(GPU_CLUSTER.nodes, None))  # this process is not on a node of the cluster
    check_storage(url, Cluster(GPU_CLUSTER.nodes[:1], "a"))  # a cluster of this host alone
    check_storage("postgresql+psycopg2://u:secret@db:5432/x", GPU_CLUSTER)


def test_the_workers_get_the_settings_and_an_absolute_sqlite_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    environ = {"LRSEARCH_HEARTBEAT_GRACE": "5", "LRSEARCH_STORAGE": "x", "OMP_NUM_THREADS": "3", "HOME": "/h"}
    assert forwarded_env(environ | {"LRSEARCH_TORCH_THREADS": "2"}) == {"LRSEARCH_HEARTBEAT_GRACE": "5"}
    monkeypatch.chdir(tmp_path)
    assert absolute_url("sqlite:///study.db") == f"sqlite:///{tmp_path / 'study.db'}"
    pg = "postgresql+psycopg2://u:secret@db:5432/x"
    assert absolute_url(pg) == pg


def test_without_ray_installed_the_message_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    study = write_study(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(main, ["start", str(study), "--storage", storage, "--ray", "auto"])
    assert result.exit_code == 1 and INSTALL_HINT in result.stderr, result.output
    assert not (tmp_path / "study.db").exists()  # nothing written


def test_a_study_file_taken_as_the_ray_address_is_explained(tmp_path: Path) -> None:
    study = write_study(tmp_path)
    result = CliRunner().invoke(main, ["start", "--ray", str(study), "--storage", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 2 and "give --ray after the study file" in result.stderr


def test_an_address_where_no_head_answers_is_refused_at_once(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason=f"Ray is not installed: {INSTALL_HINT}")
    study, storage = write_study(tmp_path), f"sqlite:///{tmp_path / 'study.db'}"
    port = _free_port()  # nothing listens there
    result = CliRunner().invoke(main, ["start", str(study), "--storage", storage, "--ray", f"127.0.0.1:{port}"])
    assert result.exit_code == 1 and f"--ray 127.0.0.1:{port}: no Ray head answers there" in result.stderr
    assert not (tmp_path / "study.db").exists()


def test_layout_errors_come_before_ray_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--gpus 0 names GPUs of this host"):
        check_layout("auto", "0", 1, "auto")
    monkeypatch.setitem(sys.modules, "ray", None)  # not even imported
    study, storage = write_study(tmp_path), f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(main, ["start", str(study), "--storage", storage, "--gpus", "0,1", "--ray", "auto"])
    assert result.exit_code == 2 and "--gpus 0,1 names GPUs of this host; with --ray" in result.stderr
    assert not (tmp_path / "study.db").exists()


def test_help_imports_neither_ray_nor_torch() -> None:
    code = (
        "import sys; from lrsearch.cli import main; sys.argv = ['lrsearch', 'start', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('ray', 'torch') if m in sys.modules]\nassert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--ray [auto|local|ADDRESS]" in result.stdout


# --- the actor's body, without Ray -----------------------------------------------------------------------


def _process(tmp_path: Path, script: str) -> WorkerProcess:
    """A WorkerProcess whose worker is a shell script (each run appends a line to `runs`)."""
    actor = WorkerProcess("study", WorkerSpec(0, "cpu", 1), "sqlite:///x.db", None, {"LRSEARCH_X": "1"})
    assert actor.command[:3] == [sys.executable, "-m", "lrsearch"] and "--quiet" in actor.command
    assert actor.env["LRSEARCH_STORAGE"] == "sqlite:///x.db" and actor.env["LRSEARCH_X"] == "1"
    actor.command = ["sh", "-c", f"echo run >> {tmp_path / 'runs'}; {script}"]
    return actor


def _runs(tmp_path: Path) -> int:
    return len((tmp_path / "runs").read_text().splitlines())


def test_a_worker_killed_by_a_signal_is_started_again(tmp_path: Path) -> None:
    # The first run kills itself; the second ends as a worker does once the budget is spent.
    actor = _process(tmp_path, f"[ -e {tmp_path / 'once'} ] && exit 0; touch {tmp_path / 'once'}; kill -9 $$")
    assert actor.run() == 0
    assert _runs(tmp_path) == 2


def test_a_worker_that_refuses_its_input_is_not_started_again(tmp_path: Path) -> None:
    assert _process(tmp_path, "exit 2").run() == 2
    assert _runs(tmp_path) == 1


def test_a_worker_that_keeps_dying_at_once_is_given_up(tmp_path: Path) -> None:
    assert _process(tmp_path, "exit 1").run() == 1
    assert _runs(tmp_path) == QUICK_DEATHS


def test_stop_ends_the_worker_and_run_returns(tmp_path: Path) -> None:
    import threading

    actor = _process(tmp_path, "trap 'exit 130' TERM; while :; do sleep 0.1; done")
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(actor.run()))
    thread.start()
    wait_for(lambda: (tmp_path / "runs").exists() and actor.pid(), 30, "the worker to start")
    actor.stop()
    thread.join(timeout=30)
    assert codes == [130] and _runs(tmp_path) == 1
    stopped = _process(tmp_path, "exit 0")
    stopped.stop()  # a stop that comes before `run` (e.g. to an actor Ray has just restarted)
    assert stopped.run() == 130 and _runs(tmp_path) == 1


# --- a real Ray cluster -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head of our own (2 CPUs, 2 GPUs declared), stopped afterwards; other Ray instances are not touched.

    Its workers import lrsearch and the synthetic objective from this checkout (PYTHONPATH)."""
    pytest.importorskip("ray", reason=f"Ray is not installed: {INSTALL_HINT}")
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    env.update(NO_RAY_TOKEN)
    env.pop("RAY_ADDRESS", None)
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths live in it
    port = _free_port()
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", "--num-cpus", "2", "--num-gpus", "2", "--port", str(port),
         "--disable-usage-stats", "--include-dashboard=false", "--temp-dir", temp,
         "--dashboard-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        wait_for(lambda: head.poll() is not None or _listening(port), 90, "the Ray head to listen")
        wait_for(lambda: head.poll() is not None or _resources(address), 90, "the Ray head to answer")
        if head.poll() is not None:
            pytest.fail(f"ray start failed:\n{head.communicate()[0]}")
        yield address
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.communicate()
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _resources(address: str) -> dict[str, float]:
    """The cluster's available resources, as Ray accounts them ({} when it does not answer)."""
    code = (
        "import json, logging, ray\n"
        f"ray.init(address={address!r}, logging_level=logging.ERROR)\n"
        "print(json.dumps(ray.available_resources()))"
    )
    env = dict(os.environ, **NO_RAY_TOKEN)
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        return {}
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 else {}


def _start(env: dict[str, str], study: Path, url: str, address: str, *args: str) -> subprocess.Popen[str]:
    return lrsearch_process(dict(env, **NO_RAY_TOKEN), "start", str(study), "--storage", url, "--ray", address, *args)


@pytest.mark.slow
def test_dry_run_shows_the_actors_and_writes_nothing(
    tmp_path: Path, sqlite_url: str, ray_head: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", NO_RAY_TOKEN["RAY_AUTH_MODE"])
    study = write_study(tmp_path, trials=3)
    args = ["start", str(study), "--storage", sqlite_url, "--ray", ray_head, "--per-gpu", "2", "--dry-run"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "Ray cluster: 1 node, 2 CPUs, 2 GPUs; 3 workers:" in result.stdout  # 2 x 2 GPUs, but 3 trials
    assert "worker 2 reserving 0.5 GPU and 1 CPU (device auto, 1 thread)" in result.stdout
    assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()


@pytest.mark.slow
def test_two_actors_share_the_gpus_and_spend_the_budget_exactly(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str], ray_head: str
) -> None:
    total = 6
    study = write_study(tmp_path, SLOW.format(samples=8000), trials=total, epochs=2)
    process = _start(process_env, study, sqlite_url, ray_head, "--workers", "2", "--per-gpu", "2")
    wait_for(lambda: mid_trial(sqlite_url), 120, "a trial to run")
    available = _resources(ray_head)  # the two actors hold 0.5 GPU and 1 CPU each while they run
    code, err = finish(process)
    assert code == 0, err
    assert available.get("GPU") == 1.0 and available.get("CPU", 0.0) == 0.0, available
    assert err.count("reserving 0.5 GPU and 1 CPU (device auto, 1 thread) as a Ray actor") == 2, err
    assert "2 workers on a Ray cluster of 1 node, 2 CPUs, 2 GPUs" in err
    trials = assert_exact(sqlite_url, total)
    assert len(trials) == total and len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"
    assert err.count(f"/{total}] trial ") == total  # a progress line per trial
    assert "Traceback" not in err
    wait_for(lambda: _resources(ray_head).get("GPU") == 2.0, 60, "the actors to release their GPUs")


@pytest.mark.slow
def test_more_workers_than_the_cluster_holds_take_turns(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str], ray_head: str
) -> None:
    # 3 actors of 1 CPU on 2 CPUs: the third runs once another's worker has ended and its actor is gone.
    study = write_study(tmp_path, trials=3, epochs=2)
    code, err = finish(_start(process_env, study, sqlite_url, ray_head, "--workers", "3", "--device", "cpu"), 120)
    assert code == 0, err
    assert err.count("reserving 1 CPU (device cpu, 1 thread) as a Ray actor") == 3
    assert_exact(sqlite_url, 3)


@pytest.mark.slow
@pytest.mark.postgres
def test_kill_9_of_a_worker_and_of_an_actor_reruns_their_trials(
    tmp_path: Path, pg_url: str, process_env: dict[str, str], ray_head: str
) -> None:
    total = 8
    study = write_study(tmp_path, SLOW.format(samples=8000), trials=total, epochs=4)
    process = _start(process_env, study, pg_url, ray_head, "--workers", "2", "--device", "cpu")
    running = wait_for(lambda: _early(mid_trial(pg_url, minimum=2)), 120, "both workers early in a trial")
    killed = [t.user_attrs["worker"] for t in running[:2]]  # type: ignore[index]
    worker_pid, other_pid = (int(worker.rsplit(":", 1)[1]) for worker in killed)
    actor_pid = int(Path(f"/proc/{other_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    os.kill(worker_pid, signal.SIGKILL)  # the actor starts its worker again
    os.kill(actor_pid, signal.SIGKILL)  # Ray starts the actor again; its worker dies with it
    code, err = finish(process)
    assert code == 0, err
    assert f"(pid {worker_pid}) was killed by SIGKILL; starting it again" in err  # the lines of the actors,
    assert "was lost with its actor's process or node; Ray restarted the actor" in err  # passed on by Ray
    trials = assert_exact(pg_url, total)
    # The trials the two workers were running when killed (normally those above; later ones if they just moved on)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert sorted(t.user_attrs["worker"] for t in failed) == sorted(killed), failed
    for victim in failed:
        [rerun] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
        assert rerun.state == TrialState.COMPLETE and rerun.user_attrs["worker"] not in killed
        assert rerun.user_attrs["seed"] == victim.user_attrs["seed"] and rerun.params.items() >= victim.params.items()
    assert not Path(f"/proc/{other_pid}").exists()  # the killed actor's worker did not run on unsupervised
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= 3, workers  # the killed worker was replaced by a new process


@pytest.mark.slow
def test_sigint_stops_every_worker_and_leaves_no_trial_running(
    tmp_path: Path, sqlite_url: str, process_env: dict[str, str], ray_head: str
) -> None:
    total = 8
    study = write_study(tmp_path, SLOW.format(samples=30000), trials=total, epochs=3)
    process = _start(process_env, study, sqlite_url, ray_head, "--workers", "2", "--device", "cpu")
    running = wait_for(lambda: mid_trial(sqlite_url, minimum=2), 120, "both workers in a trial")
    process.send_signal(signal.SIGINT)
    code, err = finish(process, timeout=90)
    assert code == 130, err
    assert "stopping: the workers fail their running trials" in err and "interrupted" in err
    assert "Traceback" not in err
    trials = read_trials(sqlite_url)
    states = count(trials)
    assert states["RUNNING"] == 0 and states["FAIL"] >= 1 and states["WAITING"] == states["FAIL"], states
    for trial in running:  # type: ignore[attr-defined]
        pid = int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"worker {pid} still runs"
    wait_for(lambda: _resources(ray_head).get("CPU") == 2.0, 60, "the actors to release their CPUs")


def _early(running: list[FrozenTrial]) -> list[FrozenTrial]:
    """The running trials, when each has epochs left to run after this moment (none will end on its own now)."""
    return running if all(len(t.intermediate_values) <= 2 for t in running) else []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
