"""The real ComfyUI frontend in headless Debian Chromium, driven by Python playwright.

One server per frontend (its own temporary user, input, output and temp folders, so the tests touch
neither the host's settings nor its input folder), one Chromium for the whole session.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import urllib.request

import harness

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
EXTENSION = "DragFusion.DragPoints"
NODE_TYPE = "DragFusionDragPoints"
SAMPLE_IMAGE = os.path.join(harness.DATA, "dragbench-dev", "animals", "JH_2023-09-14-1820-16", "original_image.png")


def host_frontend_root() -> str | None:
    """The static folder of the comfyui-frontend-package the host's Python has installed."""
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec and spec.submodule_search_locations:
        root = os.path.join(list(spec.submodule_search_locations)[0], "static")
        if os.path.isfile(os.path.join(root, "index.html")):
            return root
    return None


def frontend_version(root: str) -> str:
    dist = os.path.dirname(os.path.dirname(root))
    for name in os.listdir(dist):
        if name.startswith("comfyui_frontend_package-") and name.endswith(".dist-info"):
            return name[len("comfyui_frontend_package-"):-len(".dist-info")]
    return "?"


FRONTENDS = {
    # name -> static folder (None: not installed)
    "host": host_frontend_root,
    "1.58.1": lambda: (lambda p: p if os.path.isfile(os.path.join(p, "index.html")) else None)(
        os.path.join(harness.REPO, ".host", "frontend-1.58.1", "comfyui_frontend_package", "static")),
}


def missing_browser() -> str | None:
    if not os.path.isfile(CHROMIUM):
        return f"{CHROMIUM} not found: run scripts/setup --browser (installs Debian chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "Python playwright not installed: run scripts/setup --browser"
    return None


class FrontendServer:
    """A real ComfyUI server serving one frontend, with private user/input/output/temp folders.

    With ``backend`` (another FrontendServer), no second ComfyUI is started: this frontend's static files
    are served by a same-origin proxy in front of the backend's server (see proxy.py)."""

    def __init__(self, static_root: str, backend: "FrontendServer | None" = None):
        self.root = static_root
        self.version = frontend_version(static_root)
        self.backend = backend
        self.proxy = None
        if backend is not None:
            from proxy import FrontendProxy
            self.tmp = None
            self.input_dir = backend.input_dir
            self.server = backend.server
            self.proxy = FrontendProxy(static_root, backend.url, harness.free_port())
            self.url = self.proxy.url
            return
        self.tmp = tempfile.mkdtemp(prefix="dragfusion-browser-")
        self.input_dir = os.path.join(self.tmp, "input")
        for d in ("user", "input", "output", "temp"):
            os.makedirs(os.path.join(self.tmp, d))
        if os.path.isdir(harness.DATA):
            os.symlink(harness.DATA, os.path.join(self.input_dir, "dragfusion_data"))
        settings = os.path.join(self.tmp, "user", "default")
        os.makedirs(settings)
        with open(os.path.join(settings, "comfy.settings.json"), "w") as f:
            json.dump(BASE_SETTINGS, f)
        self.server = harness.Server(extra_args=(
            "--front-end-root", static_root, "--user-directory", os.path.join(self.tmp, "user"),
            "--input-directory", self.input_dir, "--output-directory", os.path.join(self.tmp, "output"),
            "--temp-directory", os.path.join(self.tmp, "temp")))
        self.url = self.server.url

    def start(self):
        if self.proxy is not None:
            self.proxy.start()
        else:
            self.server.start()
        return self

    def stop(self):
        if self.proxy is not None:
            self.proxy.stop()
            return
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def set_setting(self, key: str, value):
        self.server.post(f"/settings/{key}", value)

    def upload(self, path: str, name: str | None = None, subfolder: str = "") -> str:
        """POST /upload/image (multipart) -> the name as the image combo shows it."""
        name = name or os.path.basename(path)
        boundary = "----dragfusion" + os.urandom(8).hex()
        with open(path, "rb") as f:
            data = f.read()
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                 f"Content-Type: image/png\r\n\r\n".encode(), data, b"\r\n"]
        for k, v in (("type", "input"), ("subfolder", subfolder), ("overwrite", "true")):
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode())
        parts.append(f"--{boundary}--\r\n".encode())
        req = urllib.request.Request(self.url + "/upload/image", data=b"".join(parts),
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            out = json.loads(r.read())
        return f"{out['subfolder']}/{out['name']}" if out.get("subfolder") else out["name"]


BASE_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.VueNodes.Enabled": False,
    "Comfy.VueNodes.AutoScaleLayout": False,
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Validation.Workflows": False,
    "Comfy.NodeBadge.NodeIdBadgeMode": "None",
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Sidebar.Location": "left",
    "Comfy.UseNewMenu": "Top",
    "Comfy.LinkRelease.Action": "context menu",
    "Comfy.Minimap.Visible": False,
    "Comfy.Queue.ImageFit": "contain",
}


class Page:
    """One tab on one FrontendServer, in one node mode (classic or Vue 'Nodes 2.0')."""

    def __init__(self, browser, fs: FrontendServer):
        self.fs = fs
        self.context = browser.new_context(viewport={"width": 1400, "height": 950})
        self.page = self.context.new_page()
        self.console = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.vue = None

    def close(self):
        self.context.close()

    def open(self, vue: bool, timeout: float = 90):
        """(Re)load the page in the given node mode and wait until the app and the pack are ready."""
        self.fs.set_setting("Comfy.VueNodes.Enabled", bool(vue))
        self.vue = vue
        if self.page.url.startswith(self.fs.url):
            self.page.reload(wait_until="domcontentloaded")
        else:
            self.page.goto(self.fs.url, wait_until="domcontentloaded")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90):
        try:
            self.page.wait_for_function(
                """(ext) => window.app && window.app.graph && window.app.extensions
                       && window.app.extensions.some(e => e.name === ext)
                       && window.LiteGraph && window.LiteGraph.registered_node_types['DragFusionDragPoints']""",
                arg=EXTENSION, timeout=timeout * 1000)
        except Exception as e:
            raise AssertionError(f"frontend {self.fs.version}: the pack's extension {EXTENSION} never appeared "
                                 f"in app.extensions ({e}); console:\n" + "\n".join(self.console[-40:])) from None
        # Let the first-run dialogs settle, then close whatever is still open.
        self.page.keyboard.press("Escape")
        mode = self.page.evaluate("() => !!window.app.ui.settings.getSettingValue('Comfy.VueNodes.Enabled')")
        assert mode == bool(self.vue), f"Comfy.VueNodes.Enabled is {mode}, expected {self.vue}"

    def js(self, script: str, arg=None):
        return self.page.evaluate(script, arg)

    def clear_graph(self):
        """An empty workflow loaded the way the UI loads one. (graph.clear() alone is not enough on frontend
        1.49: widget values are kept per node id across it, so the next node 1 starts with the old values.)"""
        self.js("""async () => { await window.app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [],
                    groups: [], config: {}, extra: {}, version: 0.4}, true, true, 'dragfusion-empty'); }""")

    def add_node(self, type_: str, pos=(80, 80), size=None) -> int:
        return self.js("""([t, pos, size]) => {
            const n = window.LiteGraph.createNode(t);
            n.pos = pos;
            window.app.graph.add(n);
            if (size) n.setSize(size);
            window.app.graph.setDirtyCanvas(true, true);
            return n.id;
        }""", [type_, list(pos), list(size) if size else None])

    def connect(self, src: int, slot: int, dst: int, dst_slot: int):
        self.js("""([a, s, b, d]) => { const g = window.app.graph;
            g.getNodeById(a).connect(s, g.getNodeById(b), d); }""", [src, slot, dst, dst_slot])

    def set_widget(self, node_id: int, name: str, value):
        self.js("""([id, name, value]) => {
            const n = window.app.graph.getNodeById(id);
            const w = n.widgets.find(w => w.name === name);
            w.value = value; w.callback?.(value);
        }""", [node_id, name, value])

    def widget(self, node_id: int, name: str):
        return self.js("""([id, name]) => window.app.graph.getNodeById(id).widgets.find(w => w.name === name)?.value""",
                       [node_id, name])

    def canvas_locator(self, node_id: int):
        # Vue mode puts node elements under [data-node-id]; classic mode keeps DOM widgets in one container.
        return self.page.locator("canvas[data-dragfusion='canvas']").nth(self.canvas_index(node_id))

    def canvas_index(self, node_id: int) -> int:
        return self.js("""(id) => {
            const n = window.app.graph.getNodeById(id);
            return [...document.querySelectorAll("canvas[data-dragfusion='canvas']")].indexOf(n.dragfusion.canvas);
        }""", node_id)

    def wait_image(self, node_id: int, timeout: float = 30):
        self.page.wait_for_function("""(id) => { const n = window.app.graph.getNodeById(id);
            return n && n.dragfusion && n.dragfusion.img && n.dragfusion.canvas.clientWidth > 50
                   && n.dragfusion.canvas.getBoundingClientRect().width > 50; }""", arg=node_id, timeout=timeout * 1000)

    def image_to_client(self, node_id: int, x: float, y: float):
        """Client coordinates of image pixel (x, y)'s centre, from the canvas's on-screen box and the
        image's natural size (computed here, independently of the widget's own mapping)."""
        box = self.js("""(id) => { const d = window.app.graph.getNodeById(id).dragfusion;
            const r = d.canvas.getBoundingClientRect();
            return {left: r.left, top: r.top, width: r.width, height: r.height, iw: d.img.naturalWidth, ih: d.img.naturalHeight}; }""",
                      node_id)
        s = min(box["width"] / box["iw"], box["height"] / box["ih"])
        ox = box["left"] + (box["width"] - box["iw"] * s) / 2
        oy = box["top"] + (box["height"] - box["ih"] * s) / 2
        return ox + (x + 0.5) * s, oy + (y + 0.5) * s

    def make_visible(self, node_id: int):
        """Centre the canvas on the node at zoom 1 so that its widget is on screen."""
        self.js("""(id) => { const app = window.app, n = app.graph.getNodeById(id), ds = app.canvas.ds;
            ds.scale = 1; ds.offset[0] = -n.pos[0] + 320; ds.offset[1] = -n.pos[1] + 140;
            app.canvas.setDirty(true, true); }""", node_id)
        self.page.wait_for_timeout(300)

    def click_image(self, node_id: int, x: float, y: float, button: str = "left"):
        cx, cy = self.image_to_client(node_id, x, y)
        self.page.mouse.click(cx, cy, button=button)

    def drag_image(self, node_id: int, a, b, steps: int = 8):
        """Press at image pixel ``a``, move to ``b`` in ``steps`` pointer moves, release."""
        x0, y0 = self.image_to_client(node_id, *a)
        x1, y1 = self.image_to_client(node_id, *b)
        m = self.page.mouse
        m.move(x0, y0)
        m.down()
        m.move(x1, y1, steps=steps)
        m.up()

    def points(self, node_id: int) -> dict:
        return json.loads(self.widget(node_id, "points"))

    def queue(self) -> str:
        """Queue the graph from the page as the Run button does (app.queuePrompt); returns the prompt id."""
        def is_prompt(r):
            return r.request.method == "POST" and r.url.split("?")[0].endswith("/prompt")
        with self.page.expect_response(is_prompt, timeout=60_000) as info:
            self.js("() => { window.app.queuePrompt(0, 1); }")
        r = info.value
        body = r.json()
        if r.status != 200 or "prompt_id" not in body:
            raise AssertionError(f"POST /prompt from the page was rejected ({r.status}): {json.dumps(body)[:3000]}")
        return body["prompt_id"]

    def screenshot(self, path: str, node_id: int | None = None):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.page.screenshot(path=path)
