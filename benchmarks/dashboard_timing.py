"""Dashboard timing: first-screen load and a live refit on the demo data (cbpp).

Starts `python -m panel serve app` from the repo root, opens it in headless Chromium
(Playwright, Debian's /usr/bin/chromium) and measures
  * first screen: navigation until the forest plot holds the fitted cbpp estimates;
  * live refit: one keyboard step of the fe_p prior slider until the forest plot in the page
    shows the new estimates;
  * in-process: Dashboard construction (load + first fit) and AppState.fit_now per method.
Writes benchmarks/DASHBOARD_TIMING.md.   Run:  python benchmarks/dashboard_timing.py
"""
from __future__ import annotations

import platform
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FOREST_JS = """() => { const out = [];
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data instanceof Map ? Object.fromEntries(m.data) : m.data;
    if (d && 'term' in d && 'mean' in d && 'y' in d) out.push(Array.from(d['mean'])); }
  return out; }"""


PRESSES = 3
WATCH_JS = """() => { window.__forestChanged = undefined;
  for (const doc of Bokeh.documents) for (const m of doc.all_models) {
    const d = m.data instanceof Map ? Object.fromEntries(m.data) : m.data;
    if (d && 'term' in d && 'mean' in d && 'y' in d && !m.__mglmWatch) {
      m.__mglmWatch = true;
      m.change.connect(() => { if (window.__forestChanged === undefined)
        requestAnimationFrame(() => { window.__forestChanged = performance.now(); }); });
    } } }"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(repeats=3):
    from app import Dashboard
    from app.state import AppState

    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Dashboard()
        t.append(time.perf_counter() - t0)
    fits = {}
    st = AppState()
    st.load_demo("cbpp", fit=False)
    for method in st.spec.param.method.objects.values():
        st.spec.method = method
        times = []
        for i in range(repeats):
            st._cache.clear()
            t0 = time.perf_counter()
            assert st.fit_now()
            times.append(time.perf_counter() - t0)
        fits[method] = statistics.median(times)
    return statistics.median(t), fits


def in_browser(repeats=3):
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "panel", "serve", "app", "--address", "127.0.0.1", "--port",
                             str(port), "--allow-websocket-origin", f"127.0.0.1:{port}", "--liveness"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/liveness", timeout=1)
                break
            except Exception:
                time.sleep(0.5)
        loads, refits = [], []
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for i in range(repeats):
                pg = b.new_page(viewport={"width": 1500, "height": 1000})
                t0 = time.perf_counter()
                pg.goto(f"http://127.0.0.1:{port}/app")
                pg.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
                pg.wait_for_function(FOREST_JS.replace("return out;", "return out.length > 0;"), timeout=60_000)
                loads.append(time.perf_counter() - t0)
                pg.wait_for_timeout(500)  # let the first render settle
                for _ in range(PRESSES):
                    # a data-change listener on the forest plot's sources stamps the first animation
                    # frame after new estimates arrive (no polling delay in the measurement)
                    pg.evaluate(WATCH_JS)
                    handle = pg.locator(".noUi-handle").first
                    handle.focus()
                    t0 = pg.evaluate("() => performance.now()")
                    handle.press("ArrowLeft")
                    pg.wait_for_function("() => window.__forestChanged !== undefined", timeout=30_000)
                    refits.append((pg.evaluate("() => window.__forestChanged") - t0) / 1000.0)
                    print(f"refit {len(refits)}: {refits[-1]:.3f} s", flush=True)
                    pg.wait_for_timeout(800)
                pg.close()
            b.close()
        return statistics.median(loads), statistics.median(refits), max(refits)
    finally:
        proc.terminate()
        proc.wait(10)


def main():
    construct, fits = in_process()
    load, refit, refit_max = in_browser()
    from app.state import AppState, ModelSpec

    lines = [
        "# Dashboard timing", "",
        f"Produced by `python benchmarks/dashboard_timing.py` on {platform.platform()}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M')}. Medians of 3 page loads and "
        f"of {3 * PRESSES} refits (3 pages x {PRESSES} slider steps); the machine has 2 cores shared with other "
        "work, so treat these as rough. A refit is timed inside the page, from the key press to the first "
        "animation frame after the forest plot's data change (a change listener on its data sources). "
        "Bars: first screen under 3 s, live refit under 0.5 s.", "",
        "| measure | seconds |", "|---|---:|",
        f"| first screen in Chromium (navigation until the fitted forest plot is in the page) | {load:.2f} |",
        f"| live refit in Chromium (fe_p slider step until the plot shows new estimates; includes "
        f"the {AppState().debounce:.2f} s debounce) | {refit:.2f} |",
        f"| live refit, slowest of {3 * PRESSES} | {refit_max:.2f} |",
        f"| Dashboard() in process (load cbpp + first fit with default method `{ModelSpec().method}`) | "
        f"{construct:.2f} |",
    ]
    lines += [f"| AppState.fit_now on cbpp, method `{m}` | {t:.3f} |" for m, t in fits.items()]
    (ROOT / "benchmarks" / "DASHBOARD_TIMING.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
