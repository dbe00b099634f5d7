"""The HandRefiner accordion and box editor in a real AUTOMATIC1111 WebUI, in headless Chromium at 1400×2000 (a
user's window): set HANDREFINER_WEBUI_URL (a WebUI with the extension, e.g. one set up by ../shared/webui); skipped
otherwise, or without Debian's chromium/chromedriver (dev/install-browser.sh).

Set HANDREFINER_SCREENSHOT=1 to (re)write docs/images/webui-accordion.png and docs/images/webui-editor.png."""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
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


# ---- txt2img → img2img: "Send the image to img2img and edit its hand boxes" ---------------------------------------

SEND_BUTTON = "script_txt2img_handrefiner_send_boxes"


def set_value(driver, elem_id: str, value) -> None:
    """Types `value` into the widget's field (a textbox, or a slider's number box) as a user does."""
    js(driver, "const host = q('#' + arguments[0]); const field = host.querySelector('textarea, input');"
               "field.value = arguments[1]; field.dispatchEvent(new Event('input', {bubbles: true}));",
       elem_id, str(value))


def txt2img_with_handrefiner(driver, boxes: str = "") -> str:
    """A 256×256 txt2img image (2 steps) with HandRefiner on (2 steps at crop 128, fast on a CPU) and `boxes` as the
    hand boxes; returns the selected image's infotext once the gallery shows the new image."""
    tab(driver, "txt2img")
    open_accordion(driver, "script_txt2img_handrefiner_enabled")   # the InputAccordion: opened is on
    assert js(driver, "return q('#script_txt2img_handrefiner_enabled input[type=checkbox]').checked")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 256), ("txt2img_height", 256)):
        set_value(driver, elem_id, value)
    set_value(driver, "txt2img_prompt", "a hand")
    open_accordion(driver, "script_txt2img_handrefiner_sampling")
    set_value(driver, "script_txt2img_handrefiner_steps", 2)
    open_accordion(driver, "script_txt2img_handrefiner_mask_crop_and_detection")
    set_value(driver, "script_txt2img_handrefiner_crop_resolution", 128)
    open_accordion(driver, "script_txt2img_handrefiner_hand_boxes")
    set_value(driver, "script_txt2img_handrefiner_boxes", boxes)
    before = js(driver, "return q('#html_info_txt2img').innerText")
    js(driver, "q('#txt2img_generate').click()")
    return wait_for(lambda: (lambda text: text if "HandRefiner result:" in text and text != before else "")(
        js(driver, "return q('#html_info_txt2img').innerText")), 300, "the txt2img image and its infotext")


def gallery_image(driver) -> Image.Image:
    """The txt2img image the gallery shows, from the WebUI's file route."""
    import urllib.request

    src = js(driver, "return q('#txt2img_gallery img').src")
    with urllib.request.urlopen(src, timeout=30) as answer:
        return Image.open(io.BytesIO(answer.read())).convert("RGB")


def img2img_image(driver) -> Optional[Image.Image]:
    src = js(driver, "const i = q('#img2img_image img'); return i ? i.src : ''") or ""
    if not src.startswith("data:image"):
        return None
    return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")


def send_to_img2img(driver, generated: Image.Image) -> None:
    """Clicks the button (in txt2img's "Hand boxes" group) and waits for img2img to show the generated image."""
    open_accordion(driver, "script_txt2img_handrefiner_hand_boxes")
    assert shown(driver, SEND_BUTTON)
    js(driver, f"q('#{SEND_BUTTON}').click()")
    wait_for(lambda: (lambda image: image is not None and np.array_equal(np.asarray(image), np.asarray(generated)))(
        img2img_image(driver)), 60, "the generated image in img2img")


def selected_tab(driver) -> str:
    return js(driver, "return qa('#tabs > .tab-nav button').find((b) => b.classList.contains('selected'))"
                      ".textContent.trim()")


def editor_boxes(driver) -> list:
    """The boxes the img2img editor draws, in image pixels (from their position over the image)."""
    return js(driver, "const ed = q('#script_img2img_handrefiner_editor_editor .handrefiner-editor');"
                      "if (!ed) return null; const w = Number(ed.dataset.width), h = Number(ed.dataset.height);"
                      "return Array.from(ed.querySelectorAll('.handrefiner-box')).map((b) => {"
                      "const l = parseFloat(b.style.left) * w / 100, t = parseFloat(b.style.top) * h / 100;"
                      "return [l, t, l + parseFloat(b.style.width) * w / 100, t + parseFloat(b.style.height) * h / 100]"
                      "});")


def note_text(driver) -> str:
    """The editor's note (its text, not Gradio's progress text over it)."""
    return js(driver, "const t = q('#script_img2img_handrefiner_editor_note .prose');"
                      "return t ? t.textContent.trim() : ''")


def hand_boxes_of(infotext: str) -> list:
    match = re.search(r"HandRefiner hand boxes: ([-0-9.; ]+)", infotext)
    assert match, infotext
    return [[float(v) for v in part.split()] for part in match.group(1).split(";") if part.strip()]


def test_txt2img_send_to_img2img_puts_the_refined_hands_boxes_in_the_editor(driver):
    """The tiny model draws noise, so the hand is a box typed in txt2img's Hand boxes: HandRefiner refines it there
    (the landmark model on the box) and records the refined hand's box; the button carries it to img2img."""
    infotext = txt2img_with_handrefiner(driver, "[[64, 64, 160, 176]]")
    assert "HandRefiner result: refined 1 hand(s)" in infotext, infotext
    refined = hand_boxes_of(infotext)
    assert len(refined) == 1
    generated = gallery_image(driver)
    assert generated.size == (256, 256)

    send_to_img2img(driver, generated)
    assert selected_tab(driver) == "img2img"
    assert js(driver, "return q('#script_img2img_handrefiner_enabled input[type=checkbox]').checked")
    wait_for(lambda: boxes_text(driver) == json.dumps([[round(v) for v in box] for box in refined],
                                                      separators=(",", ":")), 30, "the refined box in Boxes")
    drawn = wait_for(lambda: editor_boxes(driver), 30, "the box drawn in the editor")
    assert len(drawn) == 1 and np.allclose(drawn[0], refined[0], atol=0.5), (drawn, refined)
    assert js(driver, "return Number(q('#script_img2img_handrefiner_editor_editor .handrefiner-editor')"
                      ".dataset.width)") == 256
    assert shown(driver, "script_img2img_handrefiner_edit_hand_boxes")   # opened, on screen
    wait_for(lambda: shown(driver, "script_img2img_handrefiner_editor_table"), 30, "the box table")
    # No note: the boxes are this image's (not "kept from the previous image", which the WebUI's paste of txt2img's
    # typed box into Boxes would make the editor say if the button did not wait for the editor's own update).
    wait_for(lambda: note_text(driver) == "", 30,
             "no note")
    time.sleep(2)
    assert note_text(driver) == ""
    assert boxes_text(driver) == json.dumps([[round(v) for v in box] for box in refined], separators=(",", ":"))


def test_txt2img_send_without_refined_hands_detects_them_in_img2img_and_says_none_was_found(driver):
    infotext = txt2img_with_handrefiner(driver, "")
    assert "HandRefiner result: no hands found; image unchanged" in infotext, infotext
    assert "HandRefiner hand boxes" not in infotext
    generated = gallery_image(driver)

    send_to_img2img(driver, generated)
    assert selected_tab(driver) == "img2img"
    assert js(driver, "return q('#script_img2img_handrefiner_enabled input[type=checkbox]').checked")
    note = wait_for(lambda: note_text(driver), 120,
                    "Detect's note")
    assert note.startswith("⚠ No hand found in this image. Drag on the image to draw a box"), note
    assert boxes_text(driver) == "[]" and editor_boxes(driver) == []   # the editor shows the image, no box
    assert not shown(driver, "script_img2img_handrefiner_editor_table")
