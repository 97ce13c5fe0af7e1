"""attention_patch/comfy_host.py on the real host: the version adapters pick the host's signature."""
import inspect
import os

import harness


def _host_module():
    harness.load_host()
    import dragfusion.attention_patch.comfy_host as h
    return h


def test_version_is_the_hosts(host):
    h = _host_module()
    text = open(os.path.join(harness.COMFYUI_DIR, "comfyui_version.py")).read()
    assert f'"{h.COMFYUI_VERSION}"' in text


def test_prepare_state_on_the_real_model_patcher(host):
    """Both signatures exist in the wild (0.3.75: timestep; 0.3x of 2026: timestep, model_options);
    the adapter calls the one this host has, on a real ModelPatcher."""
    import comfy.sd
    import folder_paths
    import torch
    h = _host_module()
    model, *_ = comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", harness.TINY_CKPT))
    seen = []
    params = inspect.signature(type(model).prepare_state).parameters
    from comfy.patcher_extension import CallbacksMP
    model.add_callback(CallbacksMP.ON_PREPARE_STATE, lambda *a: seen.append(len(a)))
    h.prepare_state(model, torch.tensor([1.0]), {})
    assert seen, "ON_PREPARE_STATE callbacks did not run"
    assert seen[0] == (3 if "model_options" in params else 2)


def test_prepare_state_dispatch_on_both_signatures():
    h = _host_module()

    class Old:
        def prepare_state(self, timestep):
            self.got = (timestep,)

    class New:
        def prepare_state(self, timestep, model_options):
            self.got = (timestep, model_options)

    o, n = Old(), New()
    h.prepare_state(o, 1, {"a": 1})
    h.prepare_state(n, 1, {"a": 1})
    assert o.got == (1,) and n.got == (1, {"a": 1})


def test_attention_is_looked_up_at_call_time(host):
    """Another pack (or ComfyUI's --use-*-attention) may replace optimized_attention after import."""
    from comfy.ldm.modules import attention
    h = _host_module()
    before = attention.optimized_attention
    try:
        attention.optimized_attention = lambda q, k, v, heads, **kw: "replaced"
        assert h.optimized_attention(1, 2, 3, 4) == "replaced"
    finally:
        attention.optimized_attention = before


# Built-in node modules that need a running server (PromptServer.instance) when they register: they
# cannot load in-process; tests/http/test_host_log.py checks that the real server loads them.
NEEDS_SERVER = {"nodes_replacements.py"}   # ComfyUI 0.33.0


def test_in_process_host_loads_every_builtin_node_module(host):
    """The in-process host is as complete as the server: no ComfyUI node module failed to import
    (but those that need a running server)."""
    failed = set(harness._HOST.get("import_failed") or [])
    assert not failed - NEEDS_SERVER, sorted(failed)
    assert "ImageStitch" in host.NODE_CLASS_MAPPINGS or "SaveAnimatedWEBP" in host.NODE_CLASS_MAPPINGS
