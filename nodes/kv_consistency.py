"""KV Consistency: a MODEL clone whose self-attention reads the keys/values saved during inversion."""
from comfy_api.latest import io

from ..attention_patch.kv_consistency import apply_kv_consistency
from ..guidance.errors import input_error
from . import _attentiondrag as ad
from .types import CATEGORY_ATTENTIONDRAG, AttnCaptureType

NODE = "AttentionDrag KV Consistency"


class KVConsistency(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DragFusionKVConsistency",
            display_name=NODE,
            category=CATEGORY_ATTENTIONDRAG,
            description=(
                "Regeneration with KV consistency (as DragDiffusion / FastDrag): returns a clone of the MODEL "
                "whose self-attention layers (the capture's kv_layers) attend with the keys and values saved while "
                "the original image was inverted; the model passed in is not modified. Each UNet call reads the "
                "keys/values the inversion saved at that very sigma; a sampler that calls the UNet at any other sigma "
                "(other steps, scheduler or start step) stops with an error. Output = (1 - strength) * own attention + "
                "strength * attention over the saved K/V (strength 0 = unpatched, 1 = full replacement); both "
                "the conditional and the unconditional batch entries read the saved (conditional) K/V. The "
                "capture must hold values (enable them on 'Inversion with Attention Capture'). Switched off, "
                "the model passes through untouched. " + ad.REGENERATE_DOC),
            inputs=[
                io.Model.Input("model", tooltip="The model used to regenerate (the same one that was inverted)."),
                AttnCaptureType.Input("capture", tooltip="ATTN_CAPTURE holding keys and values of the original image."),
                io.Boolean.Input("enabled", default=True, tooltip="Switch KV consistency on or off."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="0 = the model's own attention, 1 = attend only to the saved keys/values."),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, capture, enabled=True, strength=1.0):
        if not enabled:
            return io.NodeOutput(model)
        capture = ad.check_capture(capture, NODE)
        if not (0.0 <= strength <= 1.0):
            raise input_error(NODE, "strength", f"{strength} is outside 0..1")
        if not capture.kv_layers or not capture.kv_steps:
            raise input_error(NODE, "capture", "the capture holds no keys/values for KV consistency; "
                              "enable capture_values on 'Inversion with Attention Capture'")
        return io.NodeOutput(apply_kv_consistency(model, capture, strength))


NODES = [KVConsistency]
