"""Files the robustness suite needs in the real host, created before the server starts and removed
afterwards. Every name starts with dragfusion_test_ so nothing of a user's is touched."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import robust_models  # noqa: E402
from robust_files import (TAG, CKPT_DIR, CLIP_VISION_DIR, CLIP_VISION_NAME, CORRUPT, EMPTY_FILE, GOOD_IP, IMAGE_64, INPUT_DIR, IP_DIR, MARKER, MASK_40,  # noqa: E402
                          MASK_EMPTY, PICKLE_AS_ST, PICKLE_CKPT, WRONG_KEYS, write_good_image_prompt, write_pickle)


@pytest.fixture(scope="session")
def robust_files():
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    for d in (CKPT_DIR, IP_DIR, INPUT_DIR, CLIP_VISION_DIR):
        os.makedirs(d, exist_ok=True)
    made = robust_models.write_all(CKPT_DIR)
    rng = np.random.default_rng(0)
    for name, arr in ((IMAGE_64, rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
                      (MASK_40, np.full((40, 40), 255, np.uint8)),
                      (MASK_EMPTY, np.zeros((64, 64), np.uint8))):
        p = os.path.join(INPUT_DIR, name)
        Image.fromarray(arr).save(p)
        made.append(p)
    for name, write in ((PICKLE_CKPT, write_pickle), (PICKLE_AS_ST, write_pickle), (GOOD_IP, write_good_image_prompt)):
        write(os.path.join(IP_DIR, name))
        made.append(os.path.join(IP_DIR, name))
    with open(os.path.join(IP_DIR, CORRUPT), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    open(os.path.join(IP_DIR, EMPTY_FILE), "wb").close()
    save_file({"model.weight": torch.zeros(4, 4), "something.else": torch.ones(2)}, os.path.join(IP_DIR, WRONG_KEYS))
    made += [os.path.join(IP_DIR, n) for n in (CORRUPT, EMPTY_FILE, WRONG_KEYS)]
    save_file({"placeholder": torch.zeros(1)}, os.path.join(CLIP_VISION_DIR, CLIP_VISION_NAME))
    made.append(os.path.join(CLIP_VISION_DIR, CLIP_VISION_NAME))
    yield made
    for sub in ("output", "temp"):   # what the suite's SaveImage / SaveLatent / PreviewImage wrote
        for root, _, files in os.walk(os.path.join(harness.COMFYUI_DIR, sub)):
            made += [os.path.join(root, f) for f in files if f.startswith(TAG)]
    for p in made + [MARKER]:
        try:
            os.remove(p)
        except OSError:
            pass
    assert not os.path.exists(MARKER)


@pytest.fixture(scope="session")
def server(robust_files):
    """The session's real ComfyUI server, started after the test files are in place."""
    harness.ensure_data_link()
    s = harness.Server().start()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def object_info(server):
    return server.get("/object_info")
