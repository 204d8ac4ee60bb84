"""The page of ``agegap serve`` in a real headless Chromium, driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without
them the test skips here and fails in CI (``CI`` set), where a skip would hide that the
page was never tried. The screenshot is left in pytest's temporary folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli import draw_face, noise, two_faces
from tests.test_serve import METRICS, Server, make_project, start_server, stop_server

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)
WAIT_S = 120


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = (
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = make_project(tmp_path_factory.mktemp("browser-served"))
    running = start_server(folder, folder / "models" / "model.keras")
    yield running
    stop_server(running)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_page_boxes_faces_and_says_what_went_wrong(
    server: Server, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S)  # type: ignore[arg-type]
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    two_faces().save(pictures / "two faces.png")
    draw_face(160).save(pictures / "face.jpg", quality=95)
    noise(200, 150).save(pictures / "landscape.png")
    (pictures / "notes.txt").write_text("not a picture", encoding="utf-8")

    driver.get(server.url + "/")  # type: ignore[attr-defined]
    corner = driver.find_element(By.ID, "model")  # type: ignore[attr-defined]
    accuracy = f"test accuracy {100 * METRICS['accuracy']:.2f}%"
    wait.until(lambda _: accuracy in corner.text)
    assert "md5:" in corner.text

    def upload(*names: str) -> None:
        chooser = driver.find_element(By.ID, "files")  # type: ignore[attr-defined]
        driver.execute_script("arguments[0].hidden = false;", chooser)  # type: ignore[attr-defined]
        chooser.send_keys("\n".join(str(pictures / name) for name in names))

    upload("two faces.png", "face.jpg", "landscape.png")
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "figure.done")) == 3)
    figures = {
        figure.find_element(By.TAG_NAME, "figcaption").text.split(":")[0]: figure
        for figure in driver.find_elements(By.CSS_SELECTOR, "figure.done")  # type: ignore[attr-defined]
    }
    assert set(figures) == {"two faces.png", "face.jpg", "landscape.png"}
    for name, faces in (("two faces.png", 2), ("face.jpg", 1), ("landscape.png", 1)):
        boxes = figures[name].find_elements(By.CSS_SELECTOR, ".box")
        assert len(boxes) == faces, name
        for box in boxes:
            assert re.fullmatch(r"(old|young) [01]\.\d\d", box.text), box.text
            assert box.size["width"] > 10 and box.size["height"] > 10
    assert "2 faces" in figures["two faces.png"].text
    assert "no face found" in figures["landscape.png"].text

    upload("notes.txt")
    failed = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "figure.failed"))
    assert "error: notes.txt: not an image Pillow recognises" in failed[0].text

    screenshot = tmp_path / "agegap-serve-page.png"
    assert driver.save_screenshot(str(screenshot))  # type: ignore[attr-defined]
    print(f"screenshot: {screenshot}")
