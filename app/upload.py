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
#: Files up to this size are put aside in the browser tab (sessionStorage holds about 5 MB of text)
KEEP_MAX = 3 * 2**20


class ChunkedUpload(JSComponent):
    """A file input whose file arrives as ``filename`` and ``value`` (bytes, set together; an empty file as
    ``b""``), or, when the browser refused it as larger than ``max_bytes``, as ``refused`` = ``(name, size)`` (and
    one the browser could not read as ``failed`` = ``(name, reason)``). :meth:`clear` makes the input ready for
    the same file again."""

    accept = param.String(default="", doc="The file types offered, as the input's accept attribute.")
    max_bytes = param.Integer(default=50 * 2**20, bounds=(1, None), doc="The largest file the browser sends.")
    label = param.String(default="Upload", doc="The label shown above the input (its accessible name).")
    filename = param.String(default=None, allow_None=True, doc="The last file's name.")
    value = param.Bytes(default=None, allow_None=True, doc="The last file's content.")
    refused = param.Tuple(default=None, allow_None=True, length=2,
                          doc="(name, size) of the last file refused in the browser.")
    failed = param.Tuple(default=None, allow_None=True, length=2,
                         doc="(name, reason) of the last file the browser could not read.")

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
      input.addEventListener("change", async () => {
        const file = input.files && input.files[0];
        if (!file) { return; }
        if (file.size > model.max_bytes) {
          model.send_msg({ kind: "refused", name: file.name, size: file.size });
          input.value = "";
          return;
        }
        const n = Math.ceil(file.size / CHUNK);
        const kept = file.size <= KEEP_MAX ? [] : null;
        model.send_msg({ kind: "start", name: file.name, size: file.size, chunks: n });
        try {
          for (let i = 0; i < n; i++) {
            const data = await base64Of(file.slice(i * CHUNK, Math.min(file.size, (i + 1) * CHUNK)));
            if (kept) { kept.push(data); }
            model.send_msg({ kind: "chunk", index: i, data: data });
          }
        } catch (e) {
          model.send_msg({ kind: "failed", name: file.name, reason: String(e) });
          input.value = "";
          return;
        }
        try {
          if (kept && file.size) {
            window.sessionStorage.setItem("mglm-upload-pending",
                                          JSON.stringify({ filename: file.name, value: kept.join("") }));
          }
        } catch (e) { window.sessionStorage.removeItem("mglm-upload-pending"); }
        model.send_msg({ kind: "end", name: file.name });
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
        self._parts: list[bytes] | None = None
        self._expected: tuple[str, int] | None = None
        self._received = 0

    def clear(self) -> None:
        """Empty the browser's input (choosing the same file again is then a new upload)."""
        self._send_msg({"kind": "clear"})

    def _refuse(self, name: str, size: int) -> None:
        self._parts = None
        self.refused = None  # (the same file refused twice is news twice)
        self.refused = (str(name), int(size))

    def _handle_msg(self, msg) -> None:
        """Join the chunks of a file; a file whose chunks overrun its size or ``max_bytes`` (not this page's
        browser code) is dropped as refused."""
        if not isinstance(msg, dict):
            return
        kind = msg.get("kind")
        if kind == "refused":
            self._refuse(msg.get("name", ""), msg.get("size", 0))
        elif kind == "start":
            name, size = str(msg.get("name", "")), int(msg.get("size", 0))
            if size > self.max_bytes:
                self._refuse(name, size)
                return
            self._parts, self._expected, self._received = [], (name, size), 0
        elif kind == "chunk" and self._parts is not None:
            try:
                part = base64.b64decode(msg.get("data", ""), validate=True)
            except (binascii.Error, ValueError, TypeError):
                self._parts = None
                return
            self._received += len(part)
            if self._received > self._expected[1]:
                self._refuse(self._expected[0], self._received)
                return
            self._parts.append(part)
        elif kind == "end" and self._parts is not None:
            name, size = self._expected
            content, self._parts = b"".join(self._parts), None
            if len(content) != size:  # (a chunk lost: nothing is loaded)
                return
            self.filename = None  # (the same name again is news)
            self.param.update(filename=name, value=content)
        elif kind == "failed":
            self._parts = None
            self.failed = None
            self.failed = (str(msg.get("name", "")), str(msg.get("reason", ""))[:200])
