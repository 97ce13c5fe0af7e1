"""The committed example workflows are what scripts/workflows.py generates from scripts/workflow_specs.py
against the pack's nodes as they are now: a node default changed without regenerating them (the widget
values the template browser loads) fails here, with the command that fixes it. Compared: every pack node's
widget values, inputs and outputs (core nodes' widgets differ between host versions; the files are written
on the default host)."""
import json
import os
import sys

import pytest

import harness

sys.path.insert(0, os.path.join(harness.REPO, "scripts"))
import workflows  # noqa: E402
from workflow_specs import SPECS  # noqa: E402


@pytest.fixture(scope="module")
def info(host):
    return workflows.object_info_in_process()


@pytest.mark.parametrize("fname", sorted(SPECS))
def test_example_workflow_is_generated_from_its_spec(info, fname):
    spec, notes = SPECS[fname]
    expect = pack_nodes(json.loads(json.dumps(workflows.build_ui(spec, info, notes))))
    with open(os.path.join(workflows.WORKFLOW_DIR, fname), encoding="utf-8") as f:
        committed = pack_nodes(json.load(f))
    assert expect, fname
    assert committed == expect, (f"example_workflows/{fname} is stale; run "
                                 f"'.venv/bin/python scripts/workflows.py --write' and commit the result")


def pack_nodes(ui: dict) -> dict:
    """node id -> (type, widget values, input names and links, output types) of the pack's nodes."""
    return {n["id"]: (n["type"], n.get("widgets_values"), [(i["name"], i.get("link")) for i in n.get("inputs", [])],
                      [o["type"] for o in n.get("outputs", [])])
            for n in ui["nodes"] if n["type"].startswith(harness.PACK_PREFIX)}
