"""What drives ComfyUI's sampler: the dual-branch guider (layer between nodes/ and attention_patch/)."""
