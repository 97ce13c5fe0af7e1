"""The repository carries every DragBench / Drag100 sample that its code, tests and workflows name (data/),
with its licence, and nothing of it reaches outside the repository."""
import json
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "data")
SCANNED = ("tests", "bench", "scripts", "example_workflows", "nodes", "js")
NAME = re.compile(r"((?:dragbench-dev|drag100)/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)?)")


def referenced_samples() -> set:
    found = set()
    for top in SCANNED:
        for dirpath, dirnames, files in os.walk(os.path.join(REPO, top)):
            dirnames[:] = [d for d in dirnames if d not in ("__pycache__", "node_modules")]
            for f in files:
                if not f.endswith((".py", ".json", ".js", ".md", ".sh")) and "." in f:
                    continue
                try:
                    with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                        text = fh.read()
                except (UnicodeDecodeError, OSError):
                    continue
                for m in NAME.findall(text):
                    parts = m.split("/")
                    depth = 3 if parts[0] == "dragbench-dev" else 2       # category/sample, or sample
                    if len(parts) >= depth and "..." not in m:
                        found.add("/".join(parts[:depth]))
    return found


def test_every_named_sample_is_bundled():
    names = referenced_samples()
    assert "dragbench-dev/animals/JH_2023-09-14-1820-16" in names       # the scan itself works
    for name in sorted(names):
        folder = os.path.join(DATA, name)
        assert os.path.isdir(folder), f"{name} is named in the repository but not bundled in data/"
        files = set(os.listdir(folder))
        assert {"original_image.png", "drag_instruction.json", "mask.png"} <= files or \
               {"original.jpg", "points.json", "mask.png"} <= files, (name, files)


@pytest.mark.parametrize("name", ["dragbench-dev/animals/JH_2023-09-14-1820-16",
                                  "dragbench-dev/building_countryside_view/YAN_2023-09-16-1536-24",
                                  "drag100/art_0", "drag100/cat_8", "drag100/car_0", "drag100/nature_4",
                                  "drag100/face_0"])
def test_samples_are_complete(name):
    folder = os.path.join(DATA, name)
    instr = "drag_instruction.json" if name.startswith("dragbench") else "points.json"
    with open(os.path.join(folder, instr)) as f:
        points = json.load(f)["points"]
    assert len(points) >= 2 and len(points) % 2 == 0


def test_licence_and_attribution_ship_with_the_data():
    with open(os.path.join(DATA, "LICENSE-Apache-2.0.txt")) as f:
        assert "Apache License" in f.read()
    with open(os.path.join(DATA, "README.md")) as f:
        readme = f.read()
    for word in ("DragDiffusion", "Drag100", "LICENSE-Apache-2.0.txt", "drag_instruction.json", "points.json"):
        assert word in readme
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(DATA) for f in fs)
    assert size < 5 * 2 ** 20, f"data/ holds {size / 2 ** 20:.1f} MB; keep it to the few samples the repository uses"


def test_the_harness_reads_the_repository_data():
    import harness
    assert os.path.realpath(harness.DATA) == os.path.realpath(DATA)


def test_ensure_data_link(tmp_path):
    """The host sees data/ as input/dragfusion_data; an old link elsewhere is replaced, a real folder kept."""
    import harness
    host = tmp_path / "ComfyUI"
    link = harness.ensure_data_link(str(host))
    assert os.path.realpath(link) == os.path.realpath(DATA)
    assert harness.ensure_data_link(str(host)) == link                          # idempotent
    os.unlink(link)
    os.symlink(str(tmp_path), link)                                            # e.g. the old ../shared/data link
    harness.ensure_data_link(str(host))
    assert os.path.realpath(link) == os.path.realpath(DATA)
    other = tmp_path / "Other"
    (other / "input" / "dragfusion_data").mkdir(parents=True)
    harness.ensure_data_link(str(other))
    assert not os.path.islink(other / "input" / "dragfusion_data")
