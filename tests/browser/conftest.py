"""Browser fixtures: one Chromium and one real ComfyUI server for the session; one tab per frontend (the
host's own frontend served by that server, 1.58.1 by a same-origin proxy in front of it, see proxy.py),
each tab reloaded only when a test needs the other node mode.

``ui`` is parametrised over (frontend, mode); get_page() gives any of them directly.
"""
import os
import sys

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
    for fe in sorted(_ENVS, key=lambda k: k == "host"):  # proxies first, the server last
        env = _ENVS[fe]
        try:
            env.page.close()
        finally:
            env.fs.stop()
    _ENVS.clear()
    browser.close()
    pw.stop()


def _env(fe: str, browser) -> Env:
    """The host frontend's Env owns the one ComfyUI server; other frontends are proxies in front of it."""
    if fe in _ENVS:
        return _ENVS[fe]
    root = P.FRONTENDS[fe]()
    if root is None:
        pytest.skip(f"frontend {fe} is not installed: run scripts/setup "
                    "(it installs comfyui-frontend-package==1.58.1 into .host/frontend-1.58.1)")
    if not os.path.isfile(P.SAMPLE_IMAGE):
        pytest.skip(f"DragBench sample image not found at {P.SAMPLE_IMAGE} (the repository's data/)")
    if fe == "host":
        fs = P.FrontendServer(root).start()
        try:
            fs.upload(P.SAMPLE_IMAGE, SAMPLE_NAME)
            fs.upload(os.path.join(os.path.dirname(P.SAMPLE_IMAGE), "mask.png"),
                      os.path.basename(SAMPLE_MASK), os.path.dirname(SAMPLE_MASK))
        except Exception:
            fs.stop()
            raise
    else:
        fs = P.FrontendServer(root, backend=_env("host", browser).fs).start()
    _ENVS[fe] = Env(fe, fs, P.Page(browser, fs))
    return _ENVS[fe]


def get_page(browser, which: str) -> P.Page:
    """The ready tab of frontend/mode ``which`` (e.g. "host/classic"), reloaded only to switch the mode."""
    fe, mode = which.split("/")
    env = _env(fe, browser)
    pg = env.page
    if pg.vue != (mode == "vue") or not pg.page.url.startswith(env.fs.url):
        pg.open(mode == "vue")
    pg.env = env
    pg.label = f"{env.fs.version}-{mode}"
    return pg


@pytest.fixture(scope="session", params=ALL_UI)
def ui(request, chromium):
    """A ready page of one frontend in one node mode: the Page, with .env for the server."""
    return get_page(chromium, request.param)


@pytest.fixture()
def page_(ui):
    """Per test: an empty graph on the ready page."""
    ui.clear_graph()
    return ui


def save_screenshot(pg, name: str):
    """Screenshots go to out/browser/ (not tracked); tests/browser/screenshots/ holds chosen copies."""
    path = os.path.join(OUT, f"{name}.png")
    pg.screenshot(path)
    return path
