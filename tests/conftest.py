"""Fixtures for the three layers (+ browser): unit (pure torch), host (real ComfyUI in-process),
http (a real ComfyUI server), browser (the real frontend in headless Chromium)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

harness.import_pack()  # the repo as package ``dragfusion`` for unit tests


def pytest_collection_modifyitems(config, items):
    for item in items:
        layer = os.path.basename(os.path.dirname(str(item.fspath)))
        if layer in ("unit", "host", "http", "browser", "robustness"):
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture(scope="session")
def host():
    """The real ComfyUI ``nodes`` module with the pack loaded in this process."""
    return harness.load_host()


@pytest.fixture(scope="session")
def server():
    """One real ComfyUI server for the whole session, with the repository's data/ linked into input/."""
    harness.ensure_data_link()
    s = harness.Server().start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def data_dir():
    """The repository's own samples (data/): always present, never skipped."""
    assert os.path.isdir(harness.DATA), f"the repository's data folder is missing: {harness.DATA}"
    return harness.DATA


@pytest.fixture(scope="module")
def one_thread():
    """2 shared cores: one intra-op thread is many times faster than two fighting for them (use it per module)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
