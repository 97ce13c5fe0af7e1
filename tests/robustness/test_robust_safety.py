"""Safety of the weights files: a pickle whose unpickling runs code (it would create a marker file) is
never unpickled; missing, corrupt, empty and wrong-key files and names leaving the model folders are
refused with our ValueError naming the node and the input. Over HTTP (what the server lists) and
in-process (the Image Prompt Encoder node itself: over HTTP it needs a real CLIP vision model upstream)."""
import ast
import os

import pytest
import torch

import harness
import robust_files as rf

ENC = "DragFusionImagePromptEncoder"
WHERE = "Image Prompt Encoder: input 'weights'"
SOURCE_DIRS = ("nodes", "guidance", "attention_patch", "scripts")


def test_the_marker_pickle_really_runs_code(tmp_path):
    """Control: the payload the weights folder holds runs code under a full unpickler."""
    marker = tmp_path / "ran"
    path = tmp_path / "same_payload.ckpt"
    torch.save({"image_proj.latents": torch.zeros(1, 4, 8), "payload": rf.RunsCode(str(marker))}, str(path))
    assert not marker.exists()
    torch.load(str(path), weights_only=False)
    assert marker.exists()


def test_server_lists_no_pickle_and_refuses_it(server, object_info, robust_files):
    options = object_info[ENC]["input"]["required"]["weights"][1]["options"]
    assert rf.GOOD_IP in options
    assert not [o for o in options if not o.lower().endswith((".safetensors", ".sft"))], options
    assert not os.path.exists(rf.MARKER)


def clip_output(width=rf.CLIP_DIM):
    from comfy.clip_vision import Output
    out = Output()
    out["penultimate_hidden_states"] = torch.randn(1, 257, width)
    return out


BAD_WEIGHTS = {
    "pickle_ckpt": rf.PICKLE_CKPT,                        # a .ckpt pickle in the pack's own folder
    "pickle_renamed_safetensors": rf.PICKLE_AS_ST,        # the same pickle under a .safetensors name
    "corrupt_header": rf.CORRUPT,
    "empty_file": rf.EMPTY_FILE,
    "wrong_keys": rf.WRONG_KEYS,
    "missing_file": rf.PREFIX + "missing.safetensors",
    "dotdot": "../checkpoints/" + harness.TINY_CKPT,
    "dotdot_inside": "sub/../../checkpoints/" + harness.TINY_CKPT,
    "absolute": "/etc/passwd",
    "windows_drive": "C:\\weights.safetensors",
    "empty_name": "",
    "ipadapter_dotdot": "ipadapter/../checkpoints/" + harness.TINY_CKPT,
}


@pytest.mark.parametrize("case", sorted(BAD_WEIGHTS))
def test_bad_weights_file_is_refused_and_no_code_runs(host, robust_files, case):
    with pytest.raises(ValueError) as e:
        harness.run_node(ENC, clip_vision_output=clip_output(), weights=BAD_WEIGHTS[case])
    assert type(e.value) is ValueError and WHERE in str(e.value), str(e.value)[:1000]
    assert not os.path.exists(rf.MARKER), "the pickle was unpickled"


def test_good_weights_load(host, robust_files):
    prompt = harness.run_node(ENC, clip_vision_output=clip_output(), weights=rf.GOOD_IP).result[0]
    assert prompt.cond.shape[-1] == 768 and torch.isfinite(prompt.cond).all()


def test_host_loader_in_safe_mode_refuses_the_pickle(host, robust_files):
    import comfy.utils
    for name in (rf.PICKLE_CKPT, rf.PICKLE_AS_ST):
        with pytest.raises(Exception):  # noqa: B017 -- any refusal; what matters is the marker
            comfy.utils.load_torch_file(os.path.join(rf.IP_DIR, name), safe_load=True)
        assert not os.path.exists(rf.MARKER)


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            base = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield base, name, {k.arg: k.value for k in node.keywords}, node.lineno


def test_pack_source_loads_weights_only_safely():
    """Static check of the pack's code: no pickle.load(s), every torch.load has weights_only=True,
    every load_torch_file has safe_load=True, numpy never loads pickles."""
    bad = []
    for d in SOURCE_DIRS:
        for root, _, files in os.walk(os.path.join(harness.REPO, d)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(root, f)
                with open(path, encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
                for base, name, kw, line in _calls(tree):
                    where = f"{os.path.relpath(path, harness.REPO)}:{line}"
                    true = lambda k: isinstance(kw.get(k), ast.Constant) and kw[k].value is True  # noqa: E731
                    if base in ("pickle", "cPickle", "dill", "joblib") and name in ("load", "loads"):
                        bad.append(f"{where} {base}.{name}")
                    if base == "torch" and name == "load" and not true("weights_only"):
                        bad.append(f"{where} torch.load without weights_only=True")
                    if name == "load_torch_file" and not true("safe_load"):
                        bad.append(f"{where} load_torch_file without safe_load=True")
                    if base in ("np", "numpy") and name == "load" and not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
                        bad.append(f"{where} np.load may unpickle")
    assert not bad, bad
