from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from chromium import assert_not_blank, chromium, full_page_screenshot, keep, needs_chromium, wait_for
from conftest import write_study
from lrsearch.cli import main
from lrsearch.review.report import compute_summary, family_rows, ranked, write_report
from lrsearch.store.storage import open_storage
from lrsearch.study.definition import parse_table
from lrsearch.study.lifecycle import create_or_resume, load
from lrsearch.study.record import TrialRecord
from lrsearch.train.records import EpochRecord

SECTIONS = (
    "summary",
    "best",
    "history",
    "curves",
    "lr",
    "feasibility",
    "importance",
    "families",
    "compute",
    "trials",
)
FIGURES = ("history", "val_curves", "lr_curves", "feasibility", "importance")
TRIALS = 20
STUDY = """
[objective]
name = "synthetic_objective:Synthetic"
samples = 800

[targets]
min_val = 0.6  # low enough that some of the 20 trials (unseeded TPE) are feasible
max_train = 0.95

[sampler]
name = "tpe"
n_startup_trials = 8

[pruner]
name = "median"
n_startup_trials = 4
n_warmup_steps = 1
"""


def lrsearch(*args: str) -> tuple[int, str, str]:
    # one worker, in this process: the synthetic objective imports here, not in worker processes
    result = CliRunner().invoke(main, list(args), env={"LRSEARCH_WORKERS": "1"}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished 20-trial study on the synthetic objective, made by `lrsearch start`."""
    folder = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{folder / 'study.db'}"
    study_file = write_study(folder, STUDY, name="review", trials=TRIALS, epochs=3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LRSEARCH_ARTIFACT_DIR", "off")  # the report does not read them; saves time
        code, _, err = lrsearch("start", str(study_file), "--storage", url, "--device", "cpu")
    assert code == 0, err
    return url


@pytest.fixture(scope="module")
def report_dir(study_url: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report"
    code, stdout, err = lrsearch("report", "--study-name", "review", "--storage", study_url, "--out", str(out))
    assert code == 0, err
    assert stdout.strip() == f"report written: {out / 'index.html'}"
    return out


def test_report_writes_html_and_every_png(report_dir: Path) -> None:
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(["index.html", *(f"{f}.png" for f in FIGURES)])
    for name in FIGURES:
        assert_not_blank(report_dir / f"{name}.png")


def test_report_holds_every_section(report_dir: Path, study_url: str) -> None:
    html = (report_dir / "index.html").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    study, definition = load(open_storage(study_url), "review")
    best = study.best_trial  # Optuna 5: the best feasible trial
    assert f"Trial {best.number}: <code>{best.user_attrs['strategy']}" in html.replace("&#x27;", "'")
    assert "torch.optim." in html and "for epoch in range(" in html  # the PyTorch code
    assert html.count('<tr class="chosen">') == 1  # the epoch table marks the chosen epoch
    families = {t.params["scheduler"] for t in study.trials}
    families_section = html.split('<section id="families">')[1].split("</section>")[0]
    assert all(f'<td class="text">{family}</td>' in families_section for family in families)
    compute = html.split('<section id="compute">')[1].split("</section>")[0]
    assert "Saved by pruning" in compute and f"{TRIALS}</td>" in compute
    assert html.count("<tr>") >= TRIALS  # all trials are listed


def test_report_is_self_contained(report_dir: Path) -> None:
    html = (report_dir / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html and "@import" not in html and "url(" not in html
    links = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert links and all(link.startswith(("data:image/png;base64,", "#")) for link in links), links
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*data-file="([^"]+)"', html)
    assert sorted(name for _, name in images) == sorted(f"{f}.png" for f in FIGURES)
    for data, name in images:
        assert base64.b64decode(data) == (report_dir / name).read_bytes()


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_chromium_renders_the_report_offline(report_dir: Path, tmp_path: Path) -> None:
    with chromium() as driver:
        driver.get((report_dir / "index.html").as_uri())
        wait_for(driver, "return document.readyState === 'complete'")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(images) == len(FIGURES) and all(ok and w > 300 and h > 200 for ok, w, h in images), images
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert not [name for name in fetched if not name.startswith(("data:", "file:"))], fetched
        shot = full_page_screenshot(driver, tmp_path / "report.png")
    print(f"screenshot: {shot}")
    assert_not_blank(keep(shot))


def test_report_on_a_study_without_finished_trials(tmp_path: Path, sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    definition = parse_table({"study": {"name": "empty", "trials": 3}, "objective": {"name": "x:y"}}, "test")
    study = create_or_resume(storage, definition)
    index = write_report(study, definition, tmp_path / "out")
    html = index.read_text(encoding="utf-8")
    assert "has no feasible trial yet (0 complete)" in html and "No finished trial yet." in html
    for name in FIGURES:
        assert_not_blank(tmp_path / "out" / f"{name}.png", min_colours=4, max_share=0.995)


def test_report_errors_are_messages(tmp_path: Path, sqlite_url: str) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    storage = open_storage(sqlite_url)
    definition = parse_table({"study": {"name": "empty"}, "objective": {"name": "x:y"}}, "test")
    create_or_resume(storage, definition)
    code, _, err = lrsearch("report", "--storage", sqlite_url, "--out", str(blocker / "sub"))
    assert code == 1 and "cannot write the report to" in err and "Traceback" not in err
    code, _, err = lrsearch("report", "--study-name", "nope", "--storage", sqlite_url)
    assert code == 2 and "no study named 'nope'" in err


def view(number: int, state: str, family: str, val: float | None, feasible: bool, epochs: int) -> TrialRecord:
    history = tuple(EpochRecord(e, 0.1, 0.5, 0.1, 0.5, 0.1, 0.1, 2.0) for e in range(1, epochs + 1))
    return TrialRecord(
        number,
        state,
        params={"scheduler": family},
        value=val if state == "complete" else None,
        history=history,
        chosen_epoch=epochs,
        val_acc=val,
        train_acc=0.9,
        feasible=feasible,
    )


def test_family_table_and_compute_saved() -> None:
    trials = [
        view(0, "complete", "cosine", 0.93, True, 10),
        view(1, "complete", "cosine", 0.97, False, 4),  # higher, but infeasible; stopped early
        view(2, "pruned", "cosine", 0.80, False, 2),
        view(3, "complete", "step", 0.91, True, 10),
        view(4, "fail", "step", None, False, 1),
        view(5, "running", "step", None, False, 3),  # not finished: not counted
    ]
    rows = {r["family"]: r for r in family_rows(trials)}
    assert rows["cosine"] == {
        "family": "cosine",
        "trials": 3,
        "complete": 2,
        "pruned": 1,
        "feasible": 1,
        "best_val": 0.93,
        "median_val": pytest.approx(0.95),
    }
    assert rows["step"]["trials"] == 2 and rows["step"]["best_val"] == 0.91
    assert [r["family"] for r in family_rows(trials)] == ["cosine", "step"]
    assert [t.number for t in ranked(trials)] == [0, 3, 1]  # feasible first
    study = optuna.create_study()
    c = compute_summary(study, trials, epochs=10)
    assert c["finished"] == 5 and c["epochs_trained"] == 27 and c["epochs_full"] == 50
    assert c["saved_by_pruning"] == 8 and c["saved_by_stopping"] == 6
    assert c["train_seconds"] == 54.0 and c["seconds_per_epoch"] == 2.0


def test_help_imports_neither_torch_nor_matplotlib() -> None:
    code = (
        "import sys\nfrom lrsearch.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'optuna_dashboard') if m in sys.modules]\n"
        "sys.exit(' '.join(heavy) or None)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_family_colours_are_the_same_in_every_run() -> None:
    """Python's hash() of a string changes between runs (PYTHONHASHSEED): colours must not depend on it."""
    names = ["", "constant", "cosine", "my_family", "custom", "warm", "x", "y", "z", "lambda_lr", "other", "sgdr"]
    code = f"from lrsearch.review.plots import family_colour; print([family_colour(n) for n in {names!r}])"
    outputs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        outputs.add(result.stdout)
    assert len(outputs) == 1, outputs
