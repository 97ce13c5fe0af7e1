"""The standard drag-editing metrics, with weights from ComfyUI's model folders only.

Mean Distance (MD) by DIFT (Tang et al. 2023), as DragBench evaluates it: SD-2.1 UNet decoder
features at t = 261 from the output of up-block 2 (diffusers' ``up_blocks[1]``, i.e. ComfyUI's
``output_blocks[5]`` including its upsampler), averaged over an ensemble of 8 noises, bilinearly
upsampled to the image; for each pair, the source image's feature at the handle is matched by
cosine arg-max in the edited image; MD = mean pixel distance of the matches to the targets.

1-LPIPS (Zhang et al. 2018): AlexNet LPIPS v0.1 at 224x224. Two files in ``models/lpips/``:
the AlexNet backbone state dict (torchvision layout, e.g. ``alexnet-owt-7be5be79.pth``) and the
LPIPS v0.1 linear heads (``alex.pth``: ``lin0.model.1.weight`` ... ``lin4.model.1.weight``),
loaded with ``torch.load(weights_only=True)`` or safetensors. Nothing is ever downloaded.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

DIFT_T = 261
DIFT_ENSEMBLE = 8
DIFT_BLOCK = 6          # output_block_patch at block 6 sees the output of output_blocks[5]
LPIPS_SIZE = 224
LPIPS_LAYERS = (1, 4, 7, 9, 11)  # ReLU outputs of AlexNet.features
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


# ------------------------------------------------------------------------------------ DIFT / MD
class FeatureTap:
    """An output_block_patch that keeps the decoder feature entering output block ``block``."""

    def __init__(self, block: int = DIFT_BLOCK):
        self.block = block
        self.feature = None

    def __call__(self, h, hsp, transformer_options):
        if transformer_options.get("block") == ("output", self.block):
            self.feature = h.detach().float()
        return h, hsp


def dift_features(model_patcher, latent: torch.Tensor, context: torch.Tensor, t: int = DIFT_T,
                  ensemble: int = DIFT_ENSEMBLE, seed: int = 0, block: int = DIFT_BLOCK) -> torch.Tensor:
    """[1, C, h, w] DIFT feature of one model-space latent (``process_latent_in`` applied)."""
    import comfy.model_management as mm

    m = model_patcher.clone()
    tap = FeatureTap(block)
    m.set_model_output_block_patch(tap)
    mm.load_models_gpu([m])
    base = m.model
    device = mm.get_torch_device()
    dtype = base.get_dtype()
    ms = base.model_sampling
    sigma = ms.sigma(torch.tensor([float(t)])).to(device)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((ensemble,) + tuple(latent.shape[1:]), generator=g).to(device)
    x = latent.to(device).repeat(ensemble, 1, 1, 1) + noise * sigma
    ctx = context.to(device, dtype).repeat(ensemble, 1, 1)
    with torch.no_grad():
        base.apply_model(x, sigma.repeat(ensemble), c_crossattn=ctx,
                         transformer_options=m.model_options.get("transformer_options", {}))
    if tap.feature is None:
        raise RuntimeError(f"the model has no output block {block}: DIFT needs an SD-2.1-like UNet")
    return tap.feature.mean(0, keepdim=True)


def match_points(ft_src: torch.Tensor, ft_dst: torch.Tensor, handles: list, size_hw: tuple) -> list:
    """Cosine arg-max in ``ft_dst`` of the source feature at each handle; returns [(x, y)] pixels."""
    h, w = size_hw
    fs = F.interpolate(ft_src, (h, w), mode="bilinear", align_corners=False)[0]
    fd = F.normalize(F.interpolate(ft_dst, (h, w), mode="bilinear", align_corners=False)[0], dim=0)
    out = []
    for x, y in handles:
        xi, yi = min(w - 1, max(0, int(round(x)))), min(h - 1, max(0, int(round(y))))
        v = F.normalize(fs[:, yi, xi], dim=0)
        cos = torch.einsum("c,chw->hw", v, fd)
        idx = int(cos.argmax())
        out.append((idx % w, idx // w))
    return out


def mean_distance(matches: list, targets: list) -> float:
    d = [((mx - tx) ** 2 + (my - ty) ** 2) ** 0.5 for (mx, my), (tx, ty) in zip(matches, targets)]
    return float(sum(d) / len(d)) if d else float("nan")


# ---------------------------------------------------------------------------------------- LPIPS
class Lpips(torch.nn.Module):
    """AlexNet LPIPS v0.1 from local state dicts (no download)."""

    def __init__(self, backbone_sd: dict, lin_sd: dict):
        super().__init__()
        import torchvision
        net = torchvision.models.alexnet(weights=None)
        missing = [k for k in net.features.state_dict() if "features." + k not in backbone_sd and k not in backbone_sd]
        if missing:
            raise ValueError(f"LPIPS: the AlexNet backbone file lacks {missing}")
        feats = {k[len("features."):] if k.startswith("features.") else k: v for k, v in backbone_sd.items()
                 if k.startswith("features.") or k[0].isdigit()}
        net.features.load_state_dict(feats)
        self.features = net.features.eval()
        chans = (64, 192, 384, 256, 256)
        self.lins = torch.nn.ModuleList(torch.nn.Conv2d(c, 1, 1, bias=False) for c in chans)
        for i, lin in enumerate(self.lins):
            key = f"lin{i}.model.1.weight"
            if key not in lin_sd:
                raise ValueError(f"LPIPS: the linear-head file lacks {key}")
            lin.weight.data.copy_(lin_sd[key])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)

    def _layers(self, x):
        x = (x - self.shift) / self.scale
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in LPIPS_LAYERS:
                outs.append(x)
            if i >= LPIPS_LAYERS[-1]:
                break
        return outs

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a, b: [N, 3, H, W] in [-1, 1] -> [N] distances."""
        a = F.interpolate(a, (LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
        b = F.interpolate(b, (LPIPS_SIZE, LPIPS_SIZE), mode="bilinear", align_corners=False)
        total = 0
        for lin, fa, fb in zip(self.lins, self._layers(a), self._layers(b)):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((na - nb) ** 2).mean(dim=(2, 3))
        return total.view(-1)


def load_state(path: str) -> dict:
    """Safe loaders only: safetensors, or torch.load(weights_only=True)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def find_lpips_files(models_dir: str) -> tuple[str | None, str | None, str]:
    """(backbone, heads, message) from ``models/lpips/``."""
    d = os.path.join(models_dir, "lpips")
    names = sorted(os.listdir(d)) if os.path.isdir(d) else []
    backbone = next((os.path.join(d, n) for n in names if n.startswith("alexnet")), None)
    heads = next((os.path.join(d, n) for n in names if n.split(".")[0] == "alex"), None)
    missing = [what for what, p in (("models/lpips/alexnet-*.pth (AlexNet backbone)", backbone),
                                    ("models/lpips/alex.pth (LPIPS v0.1 linear heads)", heads)) if p is None]
    return backbone, heads, ("missing " + " and ".join(missing)) if missing else ""
