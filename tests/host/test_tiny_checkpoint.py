"""The tiny test checkpoint is what ComfyUI detects as an SD1.5 model."""
import os

import harness


def test_tiny_checkpoint_detected_as_sd15(host):
    import comfy.sd
    import comfy.supported_models
    import folder_paths
    path = folder_paths.get_full_path("checkpoints", harness.TINY_CKPT)
    assert path and os.path.isfile(path), "run scripts/setup"
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert model.model.model_config.unet_config["context_dim"] == 768
    assert clip is not None and vae is not None
