// HandRefiner hand-box editor: drag to move, drag a corner to resize, drag on empty image to add, × to delete.
// The boxes live in a Gradio textbox as JSON [[x0, y0, x1, y1], ...] in image pixels (x1/y1 exclusive); this
// script draws them over the editor image and writes edits back (firing "input" so Gradio sees them). It runs in
// the WebUI (which loads every javascript/*.js) and in `python -m lib_handrefiner serve` (injected on load).
(function () {
    "use strict";
    if (window.handRefinerEditor) return;
    const POLL_MS = 150;
    const MIN_SIDE = 4;
    const CORNERS = ["nw", "ne", "sw", "se"];
    const SEND_SETTLE_MS = 800;   // after Send to img2img's image: its parameters (a second event) land too
    const SAME_IMAGE_MS = 5000;   // no new image in img2img after this long: the image sent was already there

    function root() {
        if (typeof gradioApp === "function") return gradioApp();
        const app = document.querySelector("gradio-app");
        return (app && app.shadowRoot) || document;
    }

    function boxesField(editor) {
        const host = root().querySelector("#" + editor.dataset.boxesId);
        return host ? host.querySelector("textarea, input") : null;
    }

    // JSON [[x0, y0, x1, y1], ...] (what this editor writes) or "x0 y0 x1 y1; ..." (the infotext's format).
    function readBoxes(field) {
        const text = (field.value || "").trim();
        let boxes = [];
        try {
            boxes = text.startsWith("[") ? JSON.parse(text)
                : text.split(/[;\n]/).filter((p) => p.trim()).map((p) => p.trim().split(/[\s,]+/));
        } catch (e) {
            return [];
        }
        if (!Array.isArray(boxes)) return [];
        return boxes.filter((b) => Array.isArray(b) && b.length === 4).map((b) => b.map(Number))
            .filter((b) => b.every(Number.isFinite));
    }

    // Sets a Gradio textbox as a user's typing does (its "input" event, which Gradio listens to).
    function setField(field, value) {
        field.value = value;
        const event = new Event("input", {bubbles: true});
        Object.defineProperty(event, "target", {value: field});
        field.dispatchEvent(event);
    }

    function writeBoxes(editor, field, boxes) {
        const value = JSON.stringify(boxes.map((b) => b.map((v) => Math.round(v))));
        editor.dataset.rendered = value;  // already drawn: the poll need not redraw (and replace) the boxes
        setField(field, value);
    }

    function clamp(v, lo, hi) {
        return Math.min(Math.max(v, lo), hi);
    }

    function render(editor, boxes) {
        const overlay = editor.querySelector(".handrefiner-overlay");
        const width = Number(editor.dataset.width), height = Number(editor.dataset.height);
        overlay.replaceChildren();
        boxes.forEach((box, index) => {
            const el = document.createElement("div");
            el.className = "handrefiner-box";
            el.dataset.index = String(index);
            el.style.left = (100 * box[0] / width) + "%";
            el.style.top = (100 * box[1] / height) + "%";
            el.style.width = (100 * (box[2] - box[0]) / width) + "%";
            el.style.height = (100 * (box[3] - box[1]) / height) + "%";
            const label = document.createElement("span");
            label.className = "handrefiner-label";
            label.textContent = String(index + 1);
            el.appendChild(label);
            const remove = document.createElement("button");
            remove.className = "handrefiner-delete";
            remove.type = "button";
            remove.title = "Delete this box";
            remove.textContent = "×";
            el.appendChild(remove);
            CORNERS.forEach((corner) => {
                const handle = document.createElement("div");
                handle.className = "handrefiner-handle " + corner;
                handle.dataset.corner = corner;
                el.appendChild(handle);
            });
            overlay.appendChild(el);
        });
    }

    // Applies a pointer drag (dx, dy in image pixels) to a box; `mode` is "move", a corner, or "new".
    function dragged(start, mode, dx, dy, width, height) {
        let [x0, y0, x1, y1] = start;
        if (mode === "move") {
            const mx = clamp(dx, -x0, width - x1), my = clamp(dy, -y0, height - y1);
            return [x0 + mx, y0 + my, x1 + mx, y1 + my];
        }
        if (mode.includes("w")) x0 = clamp(x0 + dx, 0, x1 - MIN_SIDE);
        if (mode.includes("e")) x1 = clamp(x1 + dx, x0 + MIN_SIDE, width);
        if (mode.includes("n")) y0 = clamp(y0 + dy, 0, y1 - MIN_SIDE);
        if (mode.includes("s")) y1 = clamp(y1 + dy, y0 + MIN_SIDE, height);
        return [x0, y0, x1, y1];
    }

    function bind(editor) {
        editor.dataset.bound = "1";
        const img = editor.querySelector("img");
        const overlay = editor.querySelector(".handrefiner-overlay");
        const width = Number(editor.dataset.width), height = Number(editor.dataset.height);
        let drag = null;

        const toImage = (event) => {
            const rect = img.getBoundingClientRect();
            return [(event.clientX - rect.left) * width / rect.width,
                (event.clientY - rect.top) * height / rect.height];
        };

        overlay.addEventListener("pointerdown", (event) => {
            const field = boxesField(editor);
            if (!field || event.button !== 0) return;
            const boxes = readBoxes(field);
            const target = event.target;
            if (target.classList.contains("handrefiner-delete")) {
                boxes.splice(Number(target.parentElement.dataset.index), 1);
                render(editor, boxes);
                writeBoxes(editor, field, boxes);
                event.preventDefault();
                return;
            }
            const [px, py] = toImage(event);
            const boxEl = target.closest(".handrefiner-box");
            if (boxEl) {
                const index = Number(boxEl.dataset.index);
                drag = {index, mode: target.dataset.corner || "move", start: boxes[index], origin: [px, py], boxes};
            } else {
                const x = clamp(px, 0, width - MIN_SIDE), y = clamp(py, 0, height - MIN_SIDE);
                boxes.push([x, y, x + MIN_SIDE, y + MIN_SIDE]);
                drag = {index: boxes.length - 1, mode: "se", start: boxes[boxes.length - 1], origin: [px, py], boxes,
                        added: true};
            }
            overlay.setPointerCapture(event.pointerId);
            event.preventDefault();
        });
        overlay.addEventListener("pointermove", (event) => {
            if (!drag) return;
            const [px, py] = toImage(event);
            const [dx, dy] = [px - drag.origin[0], py - drag.origin[1]];
            drag.boxes[drag.index] = dragged(drag.start, drag.mode, dx, dy, width, height);
            render(editor, drag.boxes);
        });
        const finish = () => {
            if (!drag) return;
            const [x0, y0, x1, y1] = drag.boxes[drag.index];
            if (drag.added && (x1 - x0 < 2 * MIN_SIDE || y1 - y0 < 2 * MIN_SIDE)) {
                drag.boxes.splice(drag.index, 1);  // a click on the image, not a drag: no box
                render(editor, drag.boxes);
                drag = null;
                return;
            }
            const field = boxesField(editor);
            if (field) writeBoxes(editor, field, drag.boxes);
            drag = null;
        };
        overlay.addEventListener("pointerup", finish);
        overlay.addEventListener("pointercancel", finish);
    }

    // Gradio re-creates the editor HTML on every Detect and sets the textbox from Python (table edits): poll both.
    function poll() {
        root().querySelectorAll(".handrefiner-editor").forEach((editor) => {
            if (!editor.dataset.bound) bind(editor);
            const field = boxesField(editor);
            if (!field) return;
            // (a new editor, which Detect creates, has no data-rendered: its boxes are drawn on the first poll)
            if (editor.dataset.rendered !== field.value) {
                editor.dataset.rendered = field.value;
                render(editor, readBoxes(field));
            }
        });
    }

    // The accordion's help as hover text: each `.handrefiner-hints` element holds {element id: text}; the text
    // becomes the title of that element and of the label, input and buttons inside it (the WebUI's own tooltips
    // would otherwise answer for labels such as "Steps" or "Seed" with their text for the job's settings).
    function applyHints() {
        root().querySelectorAll(".handrefiner-hints:not([data-applied])").forEach((holder) => {
            let hints = {};
            try {
                hints = JSON.parse(holder.dataset.hints || "{}");
            } catch (e) {
                return;
            }
            let missing = 0;
            Object.entries(hints).forEach(([id, text]) => {
                const el = root().querySelector("#" + CSS.escape(id));
                if (!el) {
                    missing += 1;
                    return;
                }
                [el, ...el.querySelectorAll("label, span, input, textarea, button")].forEach((node) => {
                    node.title = text;
                });
            });
            if (!missing) holder.dataset.applied = "1";
        });
    }

    // The boxes of the hands HandRefiner refined on the txt2img image selected in the gallery: its infotext's
    // "HandRefiner hand boxes: x0 y0 x1 y1;…" (none when it refined no hand). `generationInfo` is the WebUI's
    // generation_info JSON (one infotext per gallery image).
    function refinedBoxes(generationInfo) {
        let texts = [];
        try {
            texts = JSON.parse(generationInfo || "{}").infotexts || [];
        } catch (e) {
            return [];
        }
        let index = typeof selected_gallery_index === "function" ? selected_gallery_index() : 0;
        if (index < 0 || index >= texts.length) index = 0;   // nothing selected: the first image, as the WebUI sends
        const match = /(?:^|[,\n]\s*)HandRefiner hand boxes: "?([-0-9.;\s]+)"?/.exec(texts[index] || "");
        return match ? readBoxes({value: match[1]}) : [];
    }

    function openAccordion(elemId) {
        const wrap = root().querySelector("#" + elemId + " .label-wrap");
        if (wrap && !wrap.classList.contains("open")) wrap.click();
    }

    // txt2img → img2img: the WebUI's own "Send to img2img" (image and parameters), then, once img2img shows the
    // image and the parameters have landed, HandRefiner switched on there, "Edit hand boxes" opened and scrolled to,
    // and the boxes of the hands refined in txt2img put in the editor (none refined: Detect hands, which says how
    // to go on when it finds none).
    function sendToImg2img(generationInfo) {
        const send = root().querySelector("#txt2img_send_to_img2img");
        if (!send) return [];
        const boxes = refinedBoxes(generationInfo);
        const before = root().querySelector("#img2img_image img");
        const previous = before ? before.src : null;
        send.click();
        const started = Date.now();
        const wait = setInterval(() => {
            const img = root().querySelector("#img2img_image img");
            const waited = Date.now() - started;
            // A new image; or, after a while, the same one (sent again: its src does not change).
            if (img && img.src && (img.src !== previous || waited > SAME_IMAGE_MS)) {
                clearInterval(wait);
                setTimeout(() => whenEditorIdle(() => editSentBoxes(boxes)), SEND_SETTLE_MS);
            } else if (waited > 30000) {
                clearInterval(wait);
            }
        }, 200);
        return [];
    }

    // `then()` once the editor's answer to the new image (its view and note: a Gradio event of their own, which can
    // take a second on a busy machine) has landed, so that it cannot overwrite what follows.
    function whenEditorIdle(then) {
        const started = Date.now();
        const busy = () => ["#script_img2img_handrefiner_editor_editor", "#script_img2img_handrefiner_editor_note"]
            .some((id) => root().querySelector(id + " .wrap:not(.hide)"));
        const wait = setInterval(() => {
            if (!busy() || Date.now() - started > 30000) {
                clearInterval(wait);
                then();
            }
        }, 200);
    }

    function editSentBoxes(boxes) {
        const accordion = "script_img2img_handrefiner_enabled", group = "script_img2img_handrefiner_edit_hand_boxes";
        openAccordion(accordion);   // the WebUI's InputAccordion: opening it switches HandRefiner on
        const enabled = root().querySelector("#" + accordion + " input[type=checkbox]");
        if (enabled && !enabled.checked) enabled.click();
        openAccordion(group);
        setTimeout(() => {
            const host = root().querySelector("#script_img2img_handrefiner_boxes");
            const field = host ? host.querySelector("textarea, input") : null;
            if (boxes.length && field) {
                setField(field, JSON.stringify(boxes.map((b) => b.map((v) => Math.round(v)))));
            } else {
                const detect = root().querySelector("#script_img2img_handrefiner_editor_detect");
                if (detect) detect.click();
            }
            const target = root().querySelector("#" + group);
            if (target) target.scrollIntoView({block: "start"});
        }, 300);
    }

    window.handRefinerEditor = {readBoxes, dragged, poll};
    window.handRefinerSendToImg2img = sendToImg2img;
    setInterval(() => {
        poll();
        applyHints();
    }, POLL_MS);
})();
