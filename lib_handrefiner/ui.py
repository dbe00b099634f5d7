"""Gradio (3.41) hand-box editor: detect hands, edit their boxes (drag in the image or type numbers), preview the
mask and depth, refine.

`build_editor` adds the editor to the Blocks being built (the WebUI glue places it in the accordion and in
img2img); `create_blocks` is the standalone page of `python -m lib_handrefiner serve`. The drag/resize logic is
javascript/handrefiner.js with style.css, which the WebUI loads by itself and `create_blocks` injects.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import gradio as gr
import numpy as np
from PIL import Image
from pydantic import ValidationError

from lib_handrefiner.detection import DetectorUnavailable
from lib_handrefiner.imageio import to_rgb
from lib_handrefiner.mesh import MeshModelError
from lib_handrefiner.service import HandRefinerService
from lib_handrefiner.settings import FIELDS, HandRefinerArgs, describe_error, from_widget, replace
from lib_handrefiner.settings import parse_boxes as parse_box_text

ROOT = Path(__file__).resolve().parents[1]
Box = Tuple[float, float, float, float]

# The settings the standalone page shows (the WebUI accordion shows its own, from the same model).
STANDALONE_FIELDS = ("prompt", "negative_prompt", "strength", "mode", "steps", "cfg_scale", "seed",
                     "crop_resolution", "crop_min_side", "mask_padding", "mask_feather", "max_hands",
                     "detection_confidence", "mesh_model", "mesh_fallback", "controlnet")


# ---- settings controls from HandRefinerArgs -------------------------------------------------------------------

def field_label(name: str) -> str:
    """A field's title without "HandRefiner ", its first letter upper-cased ("ControlNet", "CFG scale")."""
    return FIELDS[name].label


def field_control(name: str, value: Any, choices: Optional[Sequence[str]] = None,
                  with_info: bool = True) -> gr.components.Component:
    """A Gradio control for one HandRefinerArgs field: its title (without "HandRefiner "), description (under
    the label; `with_info=False` leaves it to the caller, e.g. as hover text), range."""
    field = FIELDS[name]
    label = field.label
    info = field.description if with_info else None
    elem_id = f"handrefiner_setting_{name}"
    if choices is not None or field.kind == "choice":
        options = list(choices) if choices is not None else list(field.choices)
        return gr.Dropdown(options, value=value, label=label, info=info, elem_id=elem_id)
    if field.kind == "bool":
        return gr.Checkbox(value=value, label=label, info=info, elem_id=elem_id)
    if field.kind in ("int", "float"):
        low, high = field.ge, field.le
        step = 1 if field.kind == "int" else 0.01
        if low is not None and high is not None and high - low <= 4096 and name != "seed":
            return gr.Slider(low, high, value=value, step=step, label=label, info=info, elem_id=elem_id)
        return gr.Number(value=value, precision=0 if step == 1 else None, label=label, info=info, elem_id=elem_id)
    return gr.Textbox(value=value, label=label, info=info, elem_id=elem_id, lines=1)


def args_from_controls(base: HandRefinerArgs, names: Sequence[str], values: Sequence[Any],
                       boxes: Sequence[Box] = ()) -> HandRefinerArgs:
    """`base` with the controls' values and the edited boxes; gr.Error naming the field on bad values."""
    update = {name: from_widget(name, value) for name, value in zip(names, values)}
    try:
        return replace(base, **update, boxes=list(boxes), boxes_mode="replace")
    except (ValidationError, ValueError) as e:
        raise gr.Error(describe_error(e)) from e


# ---- boxes: JSON text, table rows -----------------------------------------------------------------------------

def parse_boxes(text: str, width: int, height: int) -> List[Box]:
    """Boxes from the editor's JSON [[x0, y0, x1, y1], …] or the infotext's "x0 y0 x1 y1; …", clipped to the
    image; boxes left empty by clipping are dropped."""
    try:
        raw = parse_box_text(text or "")
    except ValueError as e:
        raise gr.Error(f"Boxes: {e}") from e
    return clip_boxes(raw, width, height)


def clip_boxes(raw: Sequence[Any], width: int, height: int) -> List[Box]:
    boxes = []
    for item in raw:
        try:
            x0, y0, x1, y1 = (float(v) for v in item)
        except (TypeError, ValueError) as e:
            raise gr.Error(f"Box {item!r} must be 4 numbers x0, y0, x1, y1") from e
        x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
        y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            boxes.append((round(x0), round(y0), round(x1), round(y1)))
    return boxes


def rows_to_boxes(rows: Any, width: int, height: int) -> List[Box]:
    rows = rows.values.tolist() if hasattr(rows, "values") else (rows or [])
    complete = [r for r in rows if len(r) >= 4 and all(v not in ("", None) for v in r[:4])]
    return clip_boxes([r[:4] for r in complete], width, height)


def boxes_json(boxes: Sequence[Box]) -> str:
    return json.dumps([[int(round(v)) for v in b] for b in boxes])


def table_rows(boxes: Sequence[Box]) -> List[List[int]]:
    return [[int(round(v)) for v in b] for b in boxes]


# ---- rendering --------------------------------------------------------------------------------------------------

def editor_html(image: np.ndarray, boxes_elem_id: str) -> str:
    """The editor: the image (JPEG data URL) with an overlay that handrefiner.js fills with the boxes."""
    height, width = image.shape[:2]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=88)
    src = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    return (f'<div class="handrefiner-editor" data-boxes-id="{boxes_elem_id}" data-width="{width}" '
            f'data-height="{height}"><img src="{src}" alt="image with hand boxes" width="{width}" '
            f'height="{height}"><div class="handrefiner-overlay"></div></div>'
            '<div class="handrefiner-hint">Drag a box to move it, a corner to resize, on the image to add one; '
            '× deletes.</div>')


def hands_summary(perception: Any) -> List[dict]:
    return [{"box": [int(v) for v in p.box],
             "handedness": p.hand.handedness if p.hand is not None else None,
             "score": round(float(p.hand.score), 3) if p.hand is not None else None,
             "refinable": bool(p.refinable),
             "mesh": p.mesh.model if p.mesh is not None else None,
             "found_by": p.found_by or None} for p in perception.hands]


# ---- the editor -------------------------------------------------------------------------------------------------

def image_signature(image: np.ndarray) -> str:
    """Identifies an image cheaply (size and a digest of a coarse sample of its pixels): the boxes remember the
    image they were made on, so a new image can be told from the same one sent again."""
    height, width = image.shape[:2]
    sample = np.ascontiguousarray(image[:: max(1, height // 64), :: max(1, width // 64)])
    return f"{width}x{height}:{hashlib.sha1(sample.tobytes()).hexdigest()[:16]}"


def boxes_inside(boxes: Sequence[Sequence[float]], width: int, height: int) -> Tuple[List[Box], List[Box]]:
    """(boxes inside a width×height image, boxes that are not)."""
    inside, outside = [], []
    for box in boxes:
        x0, y0, x1, y1 = (float(v) for v in box)
        (inside if 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height else outside).append((x0, y0, x1, y1))
    return inside, outside


def stale_boxes_note(kept: int, removed: int, width: int, height: int) -> str:
    """What happened to the boxes of an earlier image when a new one came (empty: nothing to say)."""
    parts = []
    if removed:
        parts.append(f"removed {removed} box(es) that lie outside this {width}×{height} image")
    if kept:
        parts.append(f"kept {kept} box(es) from the previous image (they fit this one): check them, or press "
                     "Detect hands")
    text = "; ".join(parts)
    return f"⚠ {text[:1].upper()}{text[1:]}." if text else ""


NO_HAND_NOTE = ("⚠ No hand found in this image. Drag on the image to draw a box around each hand, or lower the "
                "detection confidence and press Detect hands again.")


def detect_note(found: int) -> str:
    """What Detect says beside its boxes: nothing when it found hands, how to go on when it found none."""
    return "" if found else NO_HAND_NOTE


@dataclass
class Editor:
    image: gr.Image
    detect: gr.Button
    view: gr.HTML
    boxes: gr.Textbox
    table: gr.Dataframe
    mask: gr.Image
    depth: gr.Image
    hands: gr.JSON
    note: gr.HTML
    bound: gr.State       # the signature of the image the boxes were made on ("" when none)
    lock: Any
    prefix: str

    def connect(self, service: HandRefinerService, settings: Sequence[gr.components.Component] = (),
                read: Callable[[Sequence[Any]], HandRefinerArgs] = lambda values: HandRefinerArgs()) -> None:
        """The editor's events, with `settings` (controls of HandRefinerArgs fields) read by `read(values)`; call
        it once every setting exists (in the WebUI the editor sits above the settings it reads)."""
        connect_editor(self, service, settings, read)


def build_editor(service: HandRefinerService, image: Optional[gr.Image] = None,
                 settings: Sequence[gr.components.Component] = (), setting_names: Sequence[str] = (),
                 lock: Any = None, prefix: str = "handrefiner",
                 base_args: Callable[[], HandRefinerArgs] = HandRefinerArgs, boxes: Optional[gr.Textbox] = None,
                 read_settings: Optional[Callable[[Sequence[Any]], HandRefinerArgs]] = None,
                 connect: bool = True) -> Editor:
    """Adds Detect, the box editor, the box table, a note on boxes kept or removed for a new image, and the
    mask/depth previews.

    `image`: the image to edit (numpy or PIL; e.g. img2img's input); None adds an upload field. `settings` are
    controls holding HandRefinerArgs fields (detection thresholds, padding, …), read as `base_args()` updated with
    `setting_names`, or by `read_settings(values)` when their values need converting (the WebUI's widgets).
    `boxes`: an existing textbox (with an elem_id) to edit instead of a new one; it may hold JSON or
    "x0 y0 x1 y1; …"; None adds one. `lock` is held while perceiving (the WebUI's queue_lock there); `prefix` keeps
    element ids unique when the editor appears in several tabs. `connect=False` leaves the events to
    `Editor.connect`, for settings made after the editor."""
    lock = lock if lock is not None else nullcontext()
    if image is None:
        image = gr.Image(label="Image", type="numpy", source="upload", elem_id=f"{prefix}_image")
    with gr.Group():
        detect = gr.Button("Detect hands", elem_id=f"{prefix}_detect")
        note = gr.HTML(elem_id=f"{prefix}_note", elem_classes=["handrefiner-note"])
        view = gr.HTML(elem_id=f"{prefix}_editor")
        if boxes is None:
            boxes = gr.Textbox(label="Boxes [[x0, y0, x1, y1], …] (pixels)", value="[]", lines=1,
                               elem_id=f"{prefix}_boxes")
        if not boxes.elem_id:
            raise ValueError("the boxes textbox needs an elem_id: the editor's script finds it by that id")
        # Shown once there are boxes: an empty table would still show a row of zeros.
        table = gr.Dataframe(headers=["x0", "y0", "x1", "y1"], datatype=["number"] * 4, col_count=(4, "fixed"),
                             row_count=(1, "dynamic"), type="array", interactive=True, visible=False,
                             label="Boxes as numbers (edit for precision; add or delete rows)",
                             elem_id=f"{prefix}_table")
    with gr.Row():
        mask = gr.Image(label="Mask preview", interactive=False, elem_id=f"{prefix}_mask_preview")
        depth = gr.Image(label="Depth preview", interactive=False, elem_id=f"{prefix}_depth_preview")
    hands = gr.JSON(label="Hands", elem_id=f"{prefix}_hands")
    editor = Editor(image, detect, view, boxes, table, mask, depth, hands, note, gr.State(""), lock, prefix)
    if connect:
        editor.connect(service, settings,
                       read_settings or (lambda values: args_from_controls(base_args(), setting_names, values)))
    return editor


def table_update(boxes: Sequence[Box]) -> dict:
    return gr.update(value=table_rows(boxes), visible=bool(boxes))


def connect_editor(editor: Editor, service: HandRefinerService, settings: Sequence[gr.components.Component],
                   read: Callable[[Sequence[Any]], HandRefinerArgs]) -> None:
    image, boxes, lock = editor.image, editor.boxes, editor.lock

    def perceive(img: np.ndarray, args: HandRefinerArgs) -> Any:
        with lock:
            try:
                return service.perceive(img, args)
            except (DetectorUnavailable, MeshModelError) as e:
                raise gr.Error(str(e)) from e

    def with_boxes(values: Sequence[Any], edited: Sequence[Box]) -> HandRefinerArgs:
        try:
            return replace(read(values), boxes=list(edited), boxes_mode="replace")
        except (ValidationError, ValueError) as e:
            raise gr.Error(f"HandRefiner settings: {describe_error(e)}") from e

    def on_detect(img: Any, *values: Any):
        if img is None:
            raise gr.Error("Upload an image first.")
        img = to_rgb(img)
        perception = perceive(img, with_boxes(values, []))
        found = [tuple(p.box) for p in perception.hands]
        return (editor_html(img, boxes.elem_id), boxes_json(found), table_update(found), perception.mask,
                perception.depth, hands_summary(perception), detect_note(len(found)), image_signature(img))

    def on_new_image(img: Any, text: str, bound: str):
        """A new image: the editor shows it, the boxes that do not fit it go (with a note), those that fit stay
        (with a note: they were drawn on another image). The same image again (sent back, re-uploaded) keeps all."""
        if img is None:
            return gr.update(value=""), gr.update(), gr.update(), None, None, None, "", bound
        img = to_rgb(img)
        signature = image_signature(img)
        if signature == bound:
            return (gr.update(),) * 7 + (bound,)
        height, width = img.shape[:2]
        try:
            given = parse_boxes(text, 1 << 30, 1 << 30)   # as written: clipping to this image is the question
        except gr.Error:
            given = []
        kept, removed = boxes_inside(given, width, height)
        # The editor shows every new image, with or without boxes: a box can be dragged on it before any Detect.
        view = editor_html(img, boxes.elem_id)
        return (view, boxes_json(kept) if removed else gr.update(), table_update(kept), None, None, None,
                stale_boxes_note(len(kept), len(removed), width, height), signature)

    def edited_preview(img: Any, edits: Any, parse: Callable, echo: Callable, values: Sequence[Any]):
        """After an edit of the boxes (as text or as table rows): the other view of the boxes, the previews, and no
        note (a note on the boxes a new image kept or removed, or on Detect's finding none, is answered by the
        edit)."""
        if img is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        img = to_rgb(img)
        edited = parse(edits, img.shape[1], img.shape[0])
        perception = perceive(img, with_boxes(values, edited))
        return echo(edited), perception.mask, perception.depth, hands_summary(perception), ""

    def on_boxes(img: Any, text: str, *values: Any):
        return edited_preview(img, text, parse_boxes, table_update, values)

    def on_table(img: Any, rows: Any, *values: Any):
        return edited_preview(img, rows, rows_to_boxes, boxes_json, values)

    editor.detect.click(on_detect, inputs=[image, *settings],
                 outputs=[editor.view, boxes, editor.table, editor.mask, editor.depth, editor.hands, editor.note,
                          editor.bound])
    image.change(on_new_image, inputs=[image, boxes, editor.bound],
                 outputs=[editor.view, boxes, editor.table, editor.mask, editor.depth, editor.hands, editor.note,
                          editor.bound])
    # "input" fires on user edits only (the script fires it after a drag), never on values set from Python: so
    # Detect, the drag and the table each update the others without loops or a second perception.
    boxes.input(on_boxes, inputs=[image, boxes, *settings], outputs=[editor.table, editor.mask, editor.depth,
                                                                      editor.hands, editor.note])
    editor.table.input(on_table, inputs=[image, editor.table, *settings],
                       outputs=[boxes, editor.mask, editor.depth, editor.hands, editor.note])


# ---- the standalone page ----------------------------------------------------------------------------------------

def page_assets() -> Tuple[str, str]:
    """(css, js) of the editor, for pages the WebUI does not build."""
    css = (ROOT / "style.css").read_text(encoding="utf-8")
    js = (ROOT / "javascript" / "handrefiner.js").read_text(encoding="utf-8")
    return css, js


def create_blocks(service: HandRefinerService, lock: Any = None, defaults: HandRefinerArgs = HandRefinerArgs(),
                  notice: str = "") -> gr.Blocks:
    """The standalone page: image, settings, the editor, Refine."""
    lock = lock if lock is not None else threading.Lock()
    css, js = page_assets()
    controlnets = sorted(service.listing().controlnets)
    defaults = replace(defaults, controlnet=service.default_controlnet() or defaults.controlnet)
    with gr.Blocks(title="HandRefiner", css=css, analytics_enabled=False) as blocks:
        gr.Markdown("## HandRefiner: hand-box editor" + (f"\n\n**{notice}**" if notice else ""))
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="numpy", source="upload", elem_id="handrefiner_image")
                with gr.Accordion("Settings", open=False):
                    settings = [field_control(n, getattr(defaults, n), controlnets if n == "controlnet" else None)
                                for n in STANDALONE_FIELDS]
                refine = gr.Button("Refine", variant="primary", elem_id="handrefiner_refine")
                result = gr.Image(label="Refined", interactive=False, elem_id="handrefiner_result")
                message = gr.Textbox(label="Result", lines=3, elem_id="handrefiner_message")
            with gr.Column():
                editor = build_editor(service, image, settings, STANDALONE_FIELDS, lock, base_args=lambda: defaults)

        def on_refine(img: Optional[np.ndarray], text: str, *values: Any):
            if img is None:
                raise gr.Error("Upload an image first.")
            height, width = img.shape[:2]
            args = args_from_controls(defaults, STANDALONE_FIELDS, values, parse_boxes(text, width, height))
            if not args.boxes:
                raise gr.Error("No boxes: press Detect hands or drag a box on the image.")
            seed = args.seed if args.seed >= 0 else random.randrange(2**32)
            with lock:
                perception = service.perceive(img, args)
                if not any(p.refinable for p in perception.hands):
                    return img, "No refinable hand in the boxes (smaller than min_hand_size); the image is unchanged."
                out = service.refine(img, args, seed, perception=perception)
            return out.image, f"{out.message}\nseed {seed}\n{out.infotext}"

        refine.click(on_refine, inputs=[image, editor.boxes, *settings], outputs=[result, message])
        blocks.load(None, None, None, _js=f"() => {{ {js}\n }}")
    return blocks
