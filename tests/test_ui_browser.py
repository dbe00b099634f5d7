"""The standalone hand-box editor in headless Chromium: upload, detect, drag a box, mask preview follows, refine.

Drives Debian's `chromium` through its `chromedriver` with selenium (install both with dev/install-browser.sh;
no browser download). The page is the real `serve` app (API + Gradio Blocks) on 127.0.0.1 with tiny models.
Set HANDREFINER_SCREENSHOT=1 to (re)write docs/images/editor.png for the README.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "malformed_1.jpg"
SCREENSHOT = ROOT / "docs" / "images" / "editor.png"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver: run `bash dev/install-browser.sh`")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_models):
    import uvicorn

    from lib_handrefiner.cli.serve import TINY_NOTICE, create_app
    from lib_handrefiner.service import StandaloneService
    from lib_handrefiner.settings import HandRefinerArgs

    service = StandaloneService(tiny_models.checkpoint, tiny_models.controlnet)
    app = create_app(service, TINY_NOTICE, HandRefinerArgs(steps=2, crop_resolution=64, seed=3))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.1)
    assert server.started, "the serve app did not start"
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("selenium", reason="selenium is not installed: run `bash dev/install-browser.sh`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1280,1400", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    """Polls `condition` until it is truthy. An element the page re-rendered between finding and reading it (the
    editor redraws its boxes on every change) counts as not yet, not as a failure."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = condition()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def act(action, attempts: int = 5):
    """Runs `action` (find an element and use it), again when the page re-rendered the element in between."""
    from selenium.common.exceptions import StaleElementReferenceException

    for attempt in range(attempts):
        try:
            return action()
        except StaleElementReferenceException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.3)


def image_src(driver, elem_id: str) -> str | None:
    return driver.execute_script(
        f"const img = document.querySelector('#{elem_id} img'); return img ? img.src : null;")


def data_url_pixels(src: str) -> np.ndarray:
    assert src.startswith("data:image/"), src[:60]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))))


def boxes_value(driver) -> list:
    return json.loads(driver.execute_script("return document.querySelector('#handrefiner_boxes textarea').value"))


def test_detect_drag_preview_refine(browser, server_url, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server_url)
    upload = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#handrefiner_image input[type=file]"),
                      what="the image upload input")[0]
    upload.send_keys(str(IMAGE))
    wait_for(lambda: image_src(browser, "handrefiner_image"), what="the uploaded image")

    browser.find_element(By.ID, "handrefiner_detect").click()
    boxes = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".handrefiner-box"), what="detected boxes")
    detected = boxes_value(browser)
    assert len(detected) == len(boxes) >= 1
    mask_before_src = wait_for(lambda: image_src(browser, "handrefiner_mask_preview"), what="the mask preview")
    mask_before = data_url_pixels(mask_before_src)
    source = np.asarray(Image.open(IMAGE))
    assert mask_before.shape[:2] == source.shape[:2]
    x0, y0, x1, y1 = detected[0]
    assert mask_before[y0:y1, x0:x1].min() == 255  # the mask covers the detected box

    # Drag the first box by its body (not a corner), 60 screen pixels left and 40 down.
    act(lambda: ActionChains(browser).move_to_element(browser.find_elements(By.CSS_SELECTOR, ".handrefiner-box")[0])
        .click_and_hold().move_by_offset(-30, 20).move_by_offset(-30, 20).release().perform())
    moved = wait_for(lambda: boxes_value(browser) != detected and boxes_value(browser), what="the moved box")
    mx0, my0, mx1, my1 = moved[0]
    assert mx0 < x0 and my0 > y0 and (mx1 - mx0, my1 - my0) == (x1 - x0, y1 - y0)  # moved, same size

    mask_after_src = wait_for(lambda: (src := image_src(browser, "handrefiner_mask_preview")) != mask_before_src
                              and src, what="the mask preview to follow the box")
    mask_after = data_url_pixels(mask_after_src)
    changed = np.count_nonzero(mask_after != mask_before)
    assert changed > 100, changed
    assert mask_after[my0:my1, mx0:mx1].min() == 255  # the moved box is masked
    table = act(lambda: browser.find_element(By.ID, "handrefiner_table").text)
    assert str(mx0) in table and str(my1) in table  # the numeric table follows the drag

    screenshot = tmp_path / "editor.png"
    browser.save_screenshot(str(screenshot))
    if os.environ.get("HANDREFINER_SCREENSHOT"):
        save_small_png(screenshot, SCREENSHOT)

    # Resize by the bottom-right corner, add a box by dragging on the empty image, delete it with its × button.
    act(lambda: ActionChains(browser)
        .move_to_element(browser.find_element(By.CSS_SELECTOR, ".handrefiner-box .handrefiner-handle.se"))
        .click_and_hold().move_by_offset(-10, -10).move_by_offset(-10, -10).release().perform())
    resized = wait_for(lambda: (b := boxes_value(browser)) != moved and b, what="the resized box")[0]
    assert resized[:2] == [mx0, my0] and resized[2] < mx1 and resized[3] < my1

    def add_box() -> None:
        editor_img = browser.find_element(By.CSS_SELECTOR, ".handrefiner-editor img")
        corner = -editor_img.size["width"] // 2 + 10, -editor_img.size["height"] // 2 + 10  # near the top-left
        ActionChains(browser).move_to_element_with_offset(editor_img, *corner).click_and_hold() \
            .move_by_offset(25, 20).move_by_offset(25, 20).release().perform()

    act(add_box)
    added = wait_for(lambda: len(b := boxes_value(browser)) == 2 and b, what="the added box")
    assert added[0] == resized and added[1][0] < 30 and added[1][2] - added[1][0] >= 30
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".handrefiner-box")) == 2, what="two boxes drawn")
    act(lambda: browser.find_elements(By.CSS_SELECTOR, ".handrefiner-box .handrefiner-delete")[1].click())
    assert wait_for(lambda: len(b := boxes_value(browser)) == 1 and b, what="the deleted box") == [resized]

    # Type a number into the table: the boxes (and the drawn box) follow. The delete's answer re-renders the table
    # (and closes a cell being edited): wait for it to show the one box left first.
    wait_for(lambda: [td.text for td in browser.find_elements(By.CSS_SELECTOR, "#handrefiner_table tbody td")][:4]
             == [str(v) for v in resized], what="the table after the delete")
    def edit_first_cell():
        act(lambda: ActionChains(browser)
            .double_click(browser.find_elements(By.CSS_SELECTOR, "#handrefiner_table tbody td")[0]).perform())
        return wait_for(lambda: (el := browser.switch_to.active_element).tag_name == "input" and el, timeout=10,
                        what="cell input")

    for attempt in range(4):  # a late re-render of the table closes the cell editor: open it again
        try:
            typed = edit_first_cell()
            break
        except AssertionError:
            if attempt == 3:
                raise
    typed.send_keys(Keys.CONTROL, "a")
    typed.send_keys(str(resized[0] - 10), Keys.ENTER)
    assert wait_for(lambda: boxes_value(browser)[0][0] == resized[0] - 10, what="the typed x0")
    left = 100 * (resized[0] - 10) / source.shape[1]
    wait_for(lambda: f"left: {left:.6g}%;" in  # Chrome writes 6 significant digits
             browser.find_element(By.CSS_SELECTOR, ".handrefiner-box").get_attribute("style"), what="the box redrawn")

    # Move the box back onto the hand so that Refine has a hand to refine, then refine.
    browser.execute_script(
        "const f = document.querySelector('#handrefiner_boxes textarea'); f.value = arguments[0];"
        "f.dispatchEvent(new Event('input', {bubbles: true}));", json.dumps(detected))
    back = wait_for(lambda: (src := image_src(browser, "handrefiner_mask_preview")) != mask_after_src and src,
                    what="the mask preview back on the hand")
    assert data_url_pixels(back)[y0:y1, x0:x1].min() == 255
    browser.find_element(By.ID, "handrefiner_refine").click()
    result_src = wait_for(lambda: image_src(browser, "handrefiner_result"), timeout=180, what="the refined image")
    refined = data_url_pixels(result_src)[..., :3]
    assert refined.shape == source.shape
    assert np.abs(refined.astype(int) - source.astype(int))[mask_before > 0].mean() > 1  # the hand was repainted
    message = browser.find_element(By.CSS_SELECTOR, "#handrefiner_message textarea").get_attribute("value")
    assert "seed 3" in message


def save_small_png(source: Path, target: Path, limit: int = 300_000) -> None:
    """The screenshot as a palette PNG under `limit` bytes (downscaled if it must be)."""
    image = Image.open(source).convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        image.quantize(256).save(target, optimize=True)
        if target.stat().st_size < limit:
            return
        image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
