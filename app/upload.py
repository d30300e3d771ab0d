"""A file input that checks a file's size in the browser and sends it in chunks.

Bokeh's ``FileInput`` reads the whole file in the browser and sends it as one base64 message: a file over the
upload limit was transferred whole before the server could refuse it, and one over the websocket's message limit
(Panel's default 20 MB) closed the connection and with it the session. :class:`ChunkedUpload` refuses a file over
``max_bytes`` before reading it (the server is told its name and size, to say why) and sends the others in
chunks of 3 MiB (4 MiB of base64, well within any message limit), which the server joins and checks.

A file of at most :data:`KEEP_MAX` bytes is also put aside in the browser tab's ``sessionStorage`` (key
``mglm-upload-pending``, as ``{"filename", "value"}`` with the base64 content): the dashboard keeps it there once
read, so that a reload of the page's link finds it again (:mod:`app.dashboard`).
"""
from __future__ import annotations

import base64
import binascii
from typing import ClassVar

import param
from panel.custom import JSComponent

#: Bytes per chunk, a multiple of 3 so that the chunks' base64 texts join into the whole file's
CHUNK = 3 * 2**20
#: Files up to this size are put aside in the browser tab (sessionStorage holds about 5 MB of text, and base64 is
#: 4/3 of the file: Chromium refused 2 MiB files)
KEEP_MAX = 3 * 2**19


class ChunkedUpload(JSComponent):
    """A file input whose file arrives as ``filename`` and ``value`` (bytes, set together; an empty file as
    ``b""``), or, when the browser refused it as larger than ``max_bytes``, as ``refused`` = ``(name, size)`` (and
    one that did not arrive whole, unreadable in the browser or broken off, as ``failed`` = ``(name, reason)``).
    :meth:`clear` makes the input ready for the same file again."""

    accept = param.String(default="", doc="The file types offered, as the input's accept attribute.")
    max_bytes = param.Integer(default=50 * 2**20, bounds=(1, None), doc="The largest file the browser sends.")
    label = param.String(default="Upload", doc="The label shown above the input (its accessible name).")
    filename = param.String(default=None, allow_None=True, doc="The last file's name.")
    value = param.Bytes(default=None, allow_None=True, doc="The last file's content.")
    refused = param.Tuple(default=None, allow_None=True, length=2,
                          doc="(name, size) of the last file refused in the browser.")
    failed = param.Tuple(default=None, allow_None=True, length=2,
                         doc="(name, reason) of the last file that did not arrive whole.")

    # (what arrives stays on the server: never sent back to the browser's model)
    _rename: ClassVar[dict] = {"filename": None, "value": None, "refused": None, "failed": None}

    _esm = """
    const CHUNK = __CHUNK__, KEEP_MAX = __KEEP_MAX__;

    function base64Of(blob) {
      return new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result.slice(reader.result.indexOf(",") + 1));
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(blob);
      });
    }

    export function render({ model, el }) {
      const input = document.createElement("input");
      input.type = "file";
      input.accept = model.accept;
      input.className = "mglm-upload";
      model.on("accept", () => { input.accept = model.accept; });
      model.on("msg:custom", (msg) => { if (msg && msg.kind === "clear") { input.value = ""; } });
      let current = 0;  // the upload under way: a file chosen later stops an earlier one's loop
      input.addEventListener("change", async () => {
        const file = input.files && input.files[0];
        if (!file) { return; }
        const id = ++current;
        try { window.sessionStorage.removeItem("mglm-upload-pending"); } catch (e) { }
        if (file.size > model.max_bytes) {
          model.send_msg({ kind: "refused", id: id, name: file.name, size: file.size });
          input.value = "";
          return;
        }
        const n = Math.ceil(file.size / CHUNK);
        const kept = file.size <= KEEP_MAX ? [] : null;
        model.send_msg({ kind: "start", id: id, name: file.name, size: file.size, chunks: n });
        try {
          for (let i = 0; i < n; i++) {
            const data = await base64Of(file.slice(i * CHUNK, Math.min(file.size, (i + 1) * CHUNK)));
            if (id !== current) { return; }  // (another file was chosen meanwhile: its start reset the server)
            if (kept) { kept.push(data); }
            model.send_msg({ kind: "chunk", id: id, index: i, data: data });
          }
        } catch (e) {
          if (id === current) {
            model.send_msg({ kind: "failed", id: id, name: file.name, reason: String(e) });
            input.value = "";
          }
          return;
        }
        try {
          if (kept && file.size) {
            window.sessionStorage.setItem("mglm-upload-pending",
                                          JSON.stringify({ filename: file.name, value: kept.join("") }));
          }
        } catch (e) { window.sessionStorage.removeItem("mglm-upload-pending"); }
        model.send_msg({ kind: "end", id: id, name: file.name });
      });
      const label = document.createElement("label");
      label.className = "mglm-upload-label";
      label.textContent = model.label;
      label.appendChild(input);
      el.appendChild(label);
    }
    """.replace("__CHUNK__", str(CHUNK)).replace("__KEEP_MAX__", str(KEEP_MAX))

    _stylesheets: ClassVar[list] = ["""
    .mglm-upload-label { display: flex; flex-direction: column; gap: 4px; font-size: 13px; color: inherit; }
    .mglm-upload { width: 100%; padding: 6px; border: 1px solid #cbd5e1; border-radius: 4px; background: #f8fafc;
                   font: inherit; box-sizing: border-box; }
    .mglm-upload:focus-visible { outline: 2px solid #2563eb; outline-offset: 1px; }
    """]

    def __init__(self, **params):
        super().__init__(**params)
        self._upload: dict | None = None  # the file under way: its upload id, name, size and chunks so far

    def clear(self) -> None:
        """Empty the browser's input (choosing the same file again is then a new upload)."""
        self._send_msg({"kind": "clear"})

    def _refuse(self, name: str, size: int) -> None:
        self._upload = None
        self.refused = None  # (the same file refused twice is news twice)
        self.refused = (name, size)

    def _fail(self, name: str, reason: str) -> None:
        self._upload = None
        self.failed = None
        self.failed = (name, reason[:200])

    def _handle_msg(self, msg) -> None:
        """Join the chunks of the latest file (by its upload id; an earlier one's late messages are ignored), in
        order. A message that does not fit (not this page's browser code: a chunk out of order or not base64,
        more bytes than announced, a size over ``max_bytes``) drops the file with a message."""
        try:
            kind, uid = msg["kind"], int(msg["id"])
            name = str(msg.get("name", ""))[:300]
        except (KeyError, TypeError, ValueError, OverflowError):
            return
        if kind in ("refused", "start"):
            try:
                size = int(msg["size"])
            except (KeyError, TypeError, ValueError, OverflowError):
                return
            if kind == "refused" or size > self.max_bytes:
                self._refuse(name, size)
            elif size < 0:
                self._fail(name, f"its size was given as {size}")
            else:
                self._upload = {"id": uid, "name": name, "size": size, "parts": [], "received": 0}
            return
        up = self._upload
        if up is None or up["id"] != uid:
            return
        if kind == "chunk":
            try:
                if int(msg["index"]) != len(up["parts"]):
                    raise ValueError("a chunk arrived out of order")
                part = base64.b64decode(msg["data"], validate=True)
            except (KeyError, TypeError, ValueError, OverflowError, binascii.Error) as exc:
                self._fail(up["name"], f"its transfer broke off ({exc})")
                return
            up["received"] += len(part)
            if up["received"] > up["size"]:
                self._fail(up["name"], f"more than its {up['size']} bytes arrived")
                return
            up["parts"].append(part)
        elif kind == "end":
            self._upload = None
            content = b"".join(up["parts"])
            if len(content) != up["size"] or name != up["name"]:
                self._fail(up["name"], f"{len(content)} of its {up['size']} bytes arrived")
                return
            self.filename = None  # (the same name again is news)
            self.param.update(filename=up["name"], value=content)
        elif kind == "failed":
            self._fail(up["name"], str(msg.get("reason", "")))
