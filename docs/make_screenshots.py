"""Screenshots of the dashboard for the docs (run from the repo root with a server on PORT).

    python -m panel serve app --port 5863 --allow-websocket-origin 127.0.0.1:5863 &
    python docs/make_screenshots.py 5863
"""
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

PORT = sys.argv[1] if len(sys.argv) > 1 else "5863"
OUT = Path(__file__).resolve().parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def open_page(browser, height=1000):
    pg = browser.new_page(viewport={"width": 1500, "height": height})
    pg.goto(f"http://127.0.0.1:{PORT}/app")
    pg.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
    pg.get_by_text("FITTED").first.wait_for(timeout=60_000)
    pg.wait_for_timeout(1500)
    return pg


with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    pg = open_page(b)
    pg.screenshot(path=str(OUT / "screenshot_main.png"))
    pg.locator(".bk-tab", has_text="Random effects").first.click()
    pg.wait_for_timeout(2000)
    pg.screenshot(path=str(OUT / "screenshot_random_effects.png"))
    pg.close()

    pg = open_page(b)
    pg.locator(".bk-tab", has_text="Teaching").first.click()
    pg.wait_for_timeout(1500)
    pg.get_by_text("Draw data and fit").first.click()
    pg.get_by_text("on 600 rows").first.wait_for(timeout=60_000)
    pg.wait_for_timeout(2500)
    pg.screenshot(path=str(OUT / "screenshot_teaching.png"))
    pg.close()

    pg = open_page(b, height=2100)
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "survey_latin1.csv"
        bad.write_bytes("name,réponse\nA,1\n".encode("latin-1") + b"\xff\xfe\n")
        pg.locator("input[type=file]").first.set_input_files(str(bad))
        pg.get_by_text("is not UTF-8").first.wait_for(timeout=30_000)
    box = pg.locator("textarea").first
    box.fill("incidence ~ __import__('os').system('rm -rf /') + (1 | herd)")
    box.press("Tab")
    pg.get_by_text("Formula not accepted").first.wait_for(timeout=30_000)
    pg.wait_for_timeout(1500)
    pg.screenshot(path=str(OUT / "screenshot_bad_input.png"), full_page=False)
    pg.close()
    b.close()
print("written to", OUT)
