"""Headless Debian Chromium for the browser tests (Debian packages chromium and chromium-driver).

Tests that use it are marked `browser` and skip, with the reason, when the two binaries are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path(os.environ.get("LRSEARCH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("LRSEARCH_CHROMEDRIVER", "/usr/bin/chromedriver"))
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking")

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver)",
)


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    """A headless Chromium driven by selenium; quit on exit."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, script: str, *, timeout: float = 60.0) -> object:
    """Poll a JavaScript expression (`return ...`) until it is truthy; its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(lambda d: d.execute_script(script))


def full_page_screenshot(driver: WebDriver, path: Path, *, width: int = 1400, max_height: int = 12000) -> Path:
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max_height, height + 120))
    driver.save_screenshot(str(path))
    return path


def keep(path: Path) -> Path:
    """Copy a screenshot to $LRSEARCH_TEST_SCREENSHOTS when set (e.g. for CI to archive); returns `path`."""
    folder = os.environ.get("LRSEARCH_TEST_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(folder) / path.name)
    return path


def assert_not_blank(png: Path, *, min_colours: int = 16, max_share: float = 0.97) -> None:
    """A real picture: enough distinct colours, and no single colour covering (nearly) all of it."""
    from PIL import Image

    with Image.open(png) as image:
        assert image.format == "PNG", f"{png} is not a PNG"
        pixels = image.convert("RGB")
        width, height = pixels.size
        colours = pixels.getcolors(maxcolors=width * height)
    assert colours is not None
    most = max(count for count, _ in colours)
    assert len(colours) >= min_colours, f"{png}: only {len(colours)} colours"
    assert most / (width * height) <= max_share, f"{png}: {most / (width * height):.1%} is one colour"
