"""Every example_workflows/*.json (whatever exists when the tests are collected) loads in the real frontend
and runs when queued from the page (app.queuePrompt), with its result in /history — on both frontends
(the host's in the classic node mode, 1.58.1 in the Vue node mode, both on the one test server)."""
import glob
import json
import os

import pytest

from conftest import HOST_CLASSIC, NEW_VUE, save_screenshot
import harness

WORKFLOWS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(harness.REPO, "example_workflows", "*.json")))
FIRST_RUN = {}  # workflow -> (frontend label, API prompt, outputs) of its first run
TIMEOUT = float(os.environ.get("DRAGFUSION_WORKFLOW_TIMEOUT", "300"))


@pytest.mark.parametrize("ui", [HOST_CLASSIC, NEW_VUE], indirect=True)
@pytest.mark.parametrize("name", WORKFLOWS)
def test_example_workflow_runs_from_the_page(ui, name):
    pg = ui
    with open(os.path.join(harness.REPO, "example_workflows", name), encoding="utf-8") as f:
        workflow = json.load(f)
    pg.clear_graph()
    pg.console.clear()
    pg.js("async (wf) => { await window.app.loadGraphData(wf, true, true, 'dragfusion-test'); }", workflow)
    loaded = pg.js("""() => window.app.graph.nodes.map(n => ({id: n.id, type: n.type,
                         known: !!window.LiteGraph.registered_node_types[n.type], mode: n.mode}))""")
    assert len(loaded) == len(workflow["nodes"]), (loaded, [n["type"] for n in workflow["nodes"]])
    unknown = [n["type"] for n in loaded if not n["known"]]
    assert not unknown, f"{name}: node types missing in the frontend: {unknown}"

    pid = pg.queue()
    hist = pg.env.fs.server.wait(pid, timeout=TIMEOUT)
    status = hist.get("status", {})
    if status.get("status_str") != "success":
        err = harness.execution_error(hist) or status
        raise AssertionError(f"{name} failed on frontend {pg.label}: {json.dumps(err)[:3000]}\n"
                             f"server log:\n{pg.env.fs.server.log_tail(3000)}")
    prompt = hist["prompt"][2]
    outputs = hist.get("outputs") or {}
    cached = set()
    for kind, msg in status.get("messages", []):
        if kind == "execution_cached":
            cached.update(str(n) for n in msg.get("nodes", []))
    first = FIRST_RUN.setdefault(name, (pg.label, prompt, outputs))
    if not outputs:
        # The frontends share one server: the same prompt queued from the second frontend is answered from
        # ComfyUI's cache, which shows that this frontend serialised exactly the prompt that ran before.
        assert first[0] != pg.label and prompt == first[1], f"{name}: finished without any output in /history"
        assert cached >= set(first[2]), (cached, sorted(first[2]))
        outputs = first[2]
    if name == "drag_points_canvas.json":
        out = outputs["1"]
        assert out["drag_points"][0]["pairs"] == [{"handle": [331.0, 179.0], "target": [217.0, 177.0]}]
        assert out["mask_area"][0] > 0
        pg.page.wait_for_function("() => { const n = window.app.graph.getNodeById(1);"
                                  " return n.dragfusion && n.dragfusion.img && n.dragfusion.mask; }", timeout=20000)
        pg.make_visible(1)
        save_screenshot(pg, f"example-drag_points_canvas-{pg.label}")
