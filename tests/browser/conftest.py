"""Browser fixtures: one Chromium for the session, one server + one tab per frontend (kept for the
session), the tab reloaded only when a test needs the other node mode.

``ui`` is parametrised over (frontend, mode); tests that need fewer combinations re-parametrise it
indirectly with the constants below (the same objects, so pytest reuses the cached fixture).
"""
import os
import shutil
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import page as P  # noqa: E402

HOST_CLASSIC = "host/classic"
HOST_VUE = "host/vue"
NEW_CLASSIC = "1.58.1/classic"
NEW_VUE = "1.58.1/vue"
ALL_UI = [HOST_CLASSIC, HOST_VUE, NEW_CLASSIC, NEW_VUE]
SAMPLE_NAME = "dragfusion_sample.png"          # what example_workflows/drag_points_canvas.json uses
SAMPLE_MASK = "dragfusion_masks/dragfusion_sample_mask.png"
OUT = os.path.join(P.harness.REPO, "out", "browser")


class Env:
    """Per-frontend state kept for the whole session."""

    def __init__(self, fe: str, fs: P.FrontendServer, page: P.Page):
        self.fe, self.fs, self.page = fe, fs, page


_ENVS: dict = {}


@pytest.fixture(scope="session")
def chromium():
    why = P.missing_browser()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright
    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=P.CHROMIUM, args=P.CHROMIUM_ARGS)
    yield browser
    for env in list(_ENVS.values()):
        try:
            env.page.close()
        finally:
            env.fs.stop()
    _ENVS.clear()
    browser.close()
    pw.stop()


def _env(fe: str, browser) -> Env:
    if fe in _ENVS:
        return _ENVS[fe]
    root = P.FRONTENDS[fe]()
    if root is None:
        pytest.skip(f"frontend {fe} is not installed: run scripts/setup --browser "
                    "(pip install --target .host/frontend-1.58.1 comfyui-frontend-package==1.58.1)")
    if not os.path.isfile(P.SAMPLE_IMAGE):
        pytest.skip(f"DragBench sample image not found at {P.SAMPLE_IMAGE} (shared data)")
    fs = P.FrontendServer(root).start()
    try:
        fs.upload(P.SAMPLE_IMAGE, SAMPLE_NAME)
        fs.upload(os.path.join(os.path.dirname(P.SAMPLE_IMAGE), "mask.png"),
                  os.path.basename(SAMPLE_MASK), os.path.dirname(SAMPLE_MASK))
        page = P.Page(browser, fs)
    except Exception:
        fs.stop()
        raise
    _ENVS[fe] = Env(fe, fs, page)
    return _ENVS[fe]


@pytest.fixture(scope="session", params=ALL_UI)
def ui(request, chromium):
    """A ready page of one frontend in one node mode: the Page, with .env for the server."""
    fe, mode = request.param.split("/")
    env = _env(fe, chromium)
    pg = env.page
    if pg.vue != (mode == "vue") or not pg.page.url.startswith(env.fs.url):
        t0 = time.time()
        pg.open(mode == "vue")
        pg.open_seconds = time.time() - t0
    pg.env = env
    pg.label = f"{env.fs.version}-{mode}"
    return pg


@pytest.fixture()
def page_(ui):
    """Per test: an empty graph on the ready page."""
    ui.clear_graph()
    return ui


def save_screenshot(pg, name: str, keep: bool = False):
    path = os.path.join(OUT, f"{name}.png")
    pg.screenshot(path)
    if keep:
        dst = os.path.join(os.path.dirname(os.path.abspath(__file__)), "screenshots", f"{name}.png")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(path, dst)
    return path
