"""The HandRefiner accordion and box editor in a real AUTOMATIC1111 WebUI, in headless Chromium at 1400×2000 (a
user's window): set HANDREFINER_WEBUI_URL (a WebUI with the extension, e.g. one set up by ../shared/webui); skipped
otherwise, or without Debian's chromium/chromedriver (dev/install-browser.sh).

Set HANDREFINER_SCREENSHOT=1 to (re)write docs/images/webui-accordion.png and docs/images/webui-editor.png."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

URL = os.environ.get("HANDREFINER_WEBUI_URL", "").rstrip("/")
ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "examples" / "malformed_1.jpg"
IMAGES = ROOT / "docs" / "images"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
MAX_ACCORDION_HEIGHT = 700
VISIBLE = ("strength", "mode", "prompt", "negative_prompt", "controlnet", "inpaint_checkpoint")

pytestmark = [
    pytest.mark.skipif(not URL, reason="HANDREFINER_WEBUI_URL is not set: no running WebUI to test against"),
    pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                       reason="needs Debian's chromium and chromium-driver: run `bash dev/install-browser.sh`"),
]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    pytest.importorskip("selenium", reason="selenium is not installed: run `bash dev/install-browser.sh`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--window-size=1400,2000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_page_load_timeout(180)
    browser.get(URL + "/")
    wait_for(lambda: js(browser, "return !!q('#script_img2img_handrefiner_enabled')"), 180, "the WebUI's page")
    yield browser
    browser.quit()


def js(driver, script: str, *args):
    """Runs `script` with q(selector) and qa(selector) looking inside the WebUI's app."""
    prelude = ("const app = (typeof gradioApp === 'function') ? gradioApp() : document;"
               "const q = (s) => app.querySelector(s); const qa = (s) => Array.from(app.querySelectorAll(s));")
    return driver.execute_script(prelude + script, *args)


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def open_accordion(driver, elem_id: str) -> None:
    js(driver, f"const w = q('#{elem_id} .label-wrap'); if (!w.classList.contains('open')) w.click();")
    wait_for(lambda: js(driver, f"return q('#{elem_id} .label-wrap').classList.contains('open')"), 10, elem_id)
    time.sleep(0.5)


def tab(driver, name: str) -> None:
    js(driver, f"qa('#tabs > .tab-nav button').find((b) => b.textContent.trim() === '{name}').click()")
    time.sleep(0.5)


def height(driver, elem_id: str) -> float:
    return js(driver, f"return q('#{elem_id}').getBoundingClientRect().height")


def shown(driver, elem_id: str) -> bool:
    return js(driver, f"const e = q('#{elem_id}'); return !!e && e.offsetParent !== null "
                      "&& e.getBoundingClientRect().height > 0")


def screenshot(driver, elem_id: str, path: Path) -> None:
    if os.environ.get("HANDREFINER_SCREENSHOT") != "1":
        return
    js(driver, f"q('#{elem_id}').scrollIntoView()")
    time.sleep(0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.find_element("css selector", f"#{elem_id}").screenshot(str(path))


def test_the_opened_accordion_fits_one_screen_with_the_main_settings(driver):
    tab(driver, "txt2img")
    accordion = "script_txt2img_handrefiner_enabled"
    open_accordion(driver, accordion)
    assert height(driver, accordion) <= MAX_ACCORDION_HEIGHT, f"opened accordion is {height(driver, accordion)} px"
    for name in VISIBLE:
        assert shown(driver, f"script_txt2img_handrefiner_{name}"), name
    for hidden in ("steps", "mesh_model", "mask_padding", "boxes", "seed"):   # in collapsed groups
        assert not shown(driver, f"script_txt2img_handrefiner_{hidden}"), hidden
    # No help paragraphs under the fields; the help is hover text (on the field and on its label).
    text = js(driver, f"return q('#{accordion}').innerText")
    assert "fixed: use" not in text and "ControlNet control strength" not in text, text
    wait_for(lambda: js(driver, "return q('#script_txt2img_handrefiner_mode label').title"), 10, "hover text")
    mode_help = js(driver, "return q('#script_txt2img_handrefiner_mode label').title")
    assert mode_help.startswith("fixed: use strength;") and "`" not in mode_help
    # Model names are not cut off.
    for name in ("controlnet", "inpaint_checkpoint"):
        widths = js(driver, f"const i = q('#script_txt2img_handrefiner_{name} input'); "
                            "return [i.scrollWidth, i.clientWidth, i.value]")
        assert widths[0] <= widths[1] + 1, (name, widths)
    screenshot(driver, accordion, IMAGES / "webui-accordion.png")

    # The hand seed has the WebUI's own seed buttons: dice (-1) and recycle.
    open_accordion(driver, "script_txt2img_handrefiner_sampling")
    assert shown(driver, "script_txt2img_handrefiner_seed_random")
    assert shown(driver, "script_txt2img_handrefiner_seed_reuse")
    js(driver, "const i = q('#script_txt2img_handrefiner_seed input'); i.value = '5';"
               "i.dispatchEvent(new Event('input', {bubbles: true}));")
    js(driver, "q('#script_txt2img_handrefiner_seed_random').click()")
    wait_for(lambda: js(driver, "return q('#script_txt2img_handrefiner_seed input').value") == "-1", 10, "dice")


def upload(driver, elem_id: str, path: Path) -> None:
    field = driver.find_element("css selector", f"#{elem_id} input[type=file]")
    field.send_keys(str(path))


def boxes_text(driver) -> str:
    return js(driver, "return q('#script_img2img_handrefiner_boxes textarea, #script_img2img_handrefiner_boxes "
                      "input').value")


def test_img2img_editor_first_and_a_new_image_clears_the_stale_boxes(driver, tmp_path):
    tab(driver, "img2img")
    accordion = "script_img2img_handrefiner_enabled"
    open_accordion(driver, accordion)
    assert height(driver, accordion) <= MAX_ACCORDION_HEIGHT + 60   # + the editor's group at the top
    tops = {name: js(driver, f"return q('#script_img2img_handrefiner_{name}').getBoundingClientRect().top")
            for name in ("edit_hand_boxes", "strength")}
    assert tops["edit_hand_boxes"] < tops["strength"]   # the editor's group is the first thing in the accordion
    open_accordion(driver, "script_img2img_handrefiner_edit_hand_boxes")
    assert not shown(driver, "script_img2img_handrefiner_editor_table")   # no row of zeros before detection

    upload(driver, "img2img_image", IMAGE)
    wait_for(lambda: js(driver, "const i = q('#img2img_image img'); return i && i.src"), 60, "the image")
    js(driver, "q('#script_img2img_handrefiner_editor_detect').click()")
    wait_for(lambda: boxes_text(driver) not in ("", "[]"), 300, "detected boxes")
    wait_for(lambda: js(driver, "return qa('#script_img2img_handrefiner_editor_editor .handrefiner-box').length"), 30,
             "the boxes drawn in the editor")
    assert shown(driver, "script_img2img_handrefiner_editor_table")
    screenshot(driver, "script_img2img_handrefiner_edit_hand_boxes", IMAGES / "webui-editor.png")

    # Clear the image, upload a 224×224 one: the box of the first image lies outside it and goes, with a note.
    small = tmp_path / "small.png"
    Image.new("RGB", (224, 224), (90, 120, 150)).save(small)
    js(driver, "const b = q('#img2img_image button[aria-label=\"Clear\"]') || qa('#img2img_image button')"
               ".find((x) => x.textContent.trim() === '×' || x.getAttribute('aria-label') === 'Clear'); b.click();")
    wait_for(lambda: not js(driver, "const i = q('#img2img_image img'); return i && i.src"), 30, "cleared image")
    upload(driver, "img2img_image", small)
    note = wait_for(lambda: js(driver, "const t = q('#script_img2img_handrefiner_editor_note .prose');"
                                       "return t && t.textContent.includes('⚠') ? t.textContent.trim() : ''"),
                    120, "the note on the removed boxes")
    assert "outside this 224×224 image" in note, note
    assert boxes_text(driver) == "[]"
    assert not js(driver, "return qa('#script_img2img_handrefiner_editor_editor .handrefiner-box').length")
