"""VersaFusion's editing energy (Eq. 5-7), pure torch, one function per equation.

Features are ``[B, C, h, w]`` maps of intermediate UNet decoder blocks; masks are ``[h, w]`` or
``[B, h, w]`` weights in 0..1 on the generation branch's grid; a correspondence is a sampling grid
``[h, w, 2]`` (or ``[B, h, w, 2]``) of normalised ``(x, y)`` coordinates (``grid_sample`` convention,
``align_corners=False``: -1 and 1 are the outer edges of the first and last cell) that says where, in
the guidance (or reference) branch, each generation cell should find its content. Normalised
coordinates do not depend on the resolution, so one grid serves every feature scale.

    similarity_eq5        Eq. 5   S(m_gen, m_gud) = 1/2 (cos(F_gen[m_gen], sg(F_gud[m_gud])) + 1),
                                  averaged over the region ("local": cell by cell along the
                                  correspondence; "global": the two regions' mean feature vectors)
    energy_term           one term of Eq. 6: w / (alpha + beta * S)
    energy_eq6            Eq. 6   L = w_e/(alpha + beta*S(m_gen, m_gud)) + w_p/(alpha + beta*S(m_share, m_share))
    multiscale_energy     Eq. 6 summed over feature scales (the paper's multi-scale alignment)
    contrast_term         DragonDiffusion's removal term: the vacated place must stop looking like the object
    inpaint_term          DragonDiffusion's removal term: the vacated place must look like the background
    split_multiscale_energy   the energy in two parts whose gradients act inside / outside the edit region
    score_with_energy     Eq. 7   eps~ = eps + s * grad_z L: the energy's gradient joins the model's score
    rms_normalised_gradient   grad_z L rescaled to the noise prediction's RMS over the edit region
    x0_guided_denoised    DragonDiffusion's update: the energy enters the x0 prediction only

DragonDiffusion / DiffEditor use alpha = 1, beta = 4: with S in [0, 1] each term falls from w (S = 0,
opposite features) to w/5 (S = 1, identical features).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ALPHA = 1.0
BETA = 4.0
EDIT_MODES = ("local", "global")


# --- helpers ----------------------------------------------------------------------------------

def _mask4(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[h, w] or [B, h, w] -> [B or 1, 1, h, w] in like's dtype/device."""
    m = mask.to(device=like.device, dtype=like.dtype)
    if m.ndim == 2:
        m = m[None]
    return m[:, None]


def resize_mask(mask: torch.Tensor, hw: tuple) -> torch.Tensor:
    """A soft mask on another grid: area average when shrinking, nearest when growing (keeps 0/1)."""
    m = mask.float()
    squeeze = m.ndim == 2
    m4 = m[None, None] if squeeze else m[:, None]
    h, w = int(hw[0]), int(hw[1])
    if (h, w) == tuple(m4.shape[-2:]):
        out = m4
    elif h <= m4.shape[-2] and w <= m4.shape[-1]:
        out = F.adaptive_avg_pool2d(m4, (h, w))
    else:
        out = F.interpolate(m4, size=(h, w), mode="nearest")
    return out[0, 0] if squeeze else out[:, 0]


def resize_grid(grid: torch.Tensor, hw: tuple) -> torch.Tensor:
    """A normalised sampling grid on another resolution (bilinear; exact for translations)."""
    g = grid.float()
    squeeze = g.ndim == 3
    g4 = (g[None] if squeeze else g).permute(0, 3, 1, 2)
    h, w = int(hw[0]), int(hw[1])
    if (h, w) != tuple(g4.shape[-2:]):
        if h <= g4.shape[-2] and w <= g4.shape[-1]:
            g4 = F.adaptive_avg_pool2d(g4, (h, w))
        else:
            g4 = F.interpolate(g4, size=(h, w), mode="bilinear", align_corners=False)
    out = g4.permute(0, 2, 3, 1)
    return out[0] if squeeze else out


def identity_grid(hw: tuple, device=None, dtype=torch.float32) -> torch.Tensor:
    """The grid that maps every cell to itself: [h, w, 2] of cell-centre (x, y) in -1..1."""
    h, w = int(hw[0]), int(hw[1])
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def warp_features(f_src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """F_src read at the grid's positions: out[b, :, i, j] = F_src[b, :, at grid[i, j]] (bilinear).

    ``grid`` is [h, w, 2] or [B, h, w, 2] at the output resolution; positions outside the source
    read its border."""
    g = grid.to(device=f_src.device, dtype=f_src.dtype)
    if g.ndim == 3:
        g = g[None].expand(f_src.shape[0], -1, -1, -1)
    return F.grid_sample(f_src, g, mode="bilinear", padding_mode="border", align_corners=False)


def cosine_map(f_a: torch.Tensor, f_b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity over channels, cell by cell: [B, C, h, w] x 2 -> [B, h, w]."""
    return F.cosine_similarity(f_a, f_b, dim=1, eps=eps)


def _masked_mean(values: torch.Tensor, mask4: torch.Tensor) -> torch.Tensor:
    """values [B, h, w], mask [B|1, 1, h, w] -> [B] weighted mean (0 where the mask is empty)."""
    m = mask4[:, 0].expand_as(values)
    total = m.sum(dim=(-2, -1))
    return (values * m).sum(dim=(-2, -1)) / total.clamp_min(1e-12)


def region_mean(f: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mask-weighted mean feature vector of a region: [B, C, h, w] -> [B, C]."""
    m = _mask4(mask, f)
    return (f * m).sum(dim=(-2, -1)) / m.sum(dim=(-2, -1)).clamp_min(1e-12)


# --- Eq. 5 --------------------------------------------------------------------------------------

def similarity_eq5(f_gen: torch.Tensor, f_gud: torch.Tensor, m_gen: torch.Tensor, grid: torch.Tensor | None = None,
                   mode: str = "local", m_gud: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5: S(m_gen, m_gud) = 1/2 (cos(F_gen[m_gen], sg(F_gud[m_gud])) + 1), one value per batch row.

    ``local``: cell by cell -- each generation cell of ``m_gen`` against the guidance feature at its
    corresponding position (``grid``; None = the same cell), weighted mean over ``m_gen``.
    ``global``: the cosine of the two regions' mean feature vectors (``m_gud`` on the guidance grid;
    None = ``m_gen``) -- for appearance, style and outpainting, where no cell-to-cell map exists.
    The guidance features are detached (sg = stop-gradient): only the generation branch is steered.
    """
    f_ref = f_gud.detach()
    if mode == "local":
        if grid is not None:
            f_ref = warp_features(f_ref, grid)
        if f_ref.shape[-2:] != f_gen.shape[-2:]:
            raise ValueError(f"local similarity needs aligned features: {tuple(f_gen.shape)} vs {tuple(f_ref.shape)}")
        s = 0.5 * (cosine_map(f_gen, f_ref) + 1.0)
        return _masked_mean(s, _mask4(m_gen, f_gen))
    if mode == "global":
        v_gen = region_mean(f_gen, m_gen)
        v_ref = region_mean(f_ref, m_gen if m_gud is None else m_gud)
        return 0.5 * (F.cosine_similarity(v_gen, v_ref, dim=1, eps=1e-8) + 1.0)
    raise ValueError(f"similarity mode {mode!r} is not one of {EDIT_MODES}")


# --- Eq. 6 --------------------------------------------------------------------------------------

def energy_term(s: torch.Tensor, w: float, alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """One term of Eq. 6: w / (alpha + beta * S). Falls as the similarity S rises."""
    return w / (alpha + beta * s)


def energy_eq6(s_edit: torch.Tensor, s_share: torch.Tensor, w_e: float, w_p: float,
               alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """Eq. 6: L = w_e / (alpha + beta*S(m_gen, m_gud)) + w_p / (alpha + beta*S(m_share, m_share))."""
    return energy_term(s_edit, w_e, alpha, beta) + energy_term(s_share, w_p, alpha, beta)


def contrast_term(s_vacate: torch.Tensor, w: float) -> torch.Tensor:
    """w * S(m_vacate, m_vacate): the vacated cells compared cell by cell with the source there (Eq. 5's
    S in [0, 1]); it falls as they stop resembling the object that left (DragonDiffusion's w_contrast)."""
    return w * s_vacate


def inpaint_term(s_fill: torch.Tensor, w: float, alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """w / (alpha + beta * S): S the global similarity of the vacated cells' mean feature to the source
    background's mean feature; it falls as the hole fills with background (DragonDiffusion's w_inpaint)."""
    return energy_term(s_fill, w, alpha, beta)


def split_multiscale_energy(feats_gen: list, feats_edit_src: list, feats_share_src: list, m_gen: torch.Tensor,
                            edit_grid: torch.Tensor | None, m_share: torch.Tensor, share_grid: torch.Tensor | None,
                            w_e: float, w_p: float, alpha: float = ALPHA, beta: float = BETA, edit_mode: str = "local",
                            m_edit_src: torch.Tensor | None = None, scale_weights: list | None = None,
                            m_vacate: torch.Tensor | None = None, w_contrast: float = 0.0, w_inpaint: float = 0.0,
                            nonempty: dict | None = None):
    """Eq. 6 with DragonDiffusion's removal terms, as two energies: ``inside`` (the edit term, the
    contrast and inpaint terms over ``m_vacate``, the cells the edit empties) whose gradient acts in the
    edit region, and ``outside`` (the preservation term) whose gradient acts elsewhere. The removal terms
    read the guidance branch (``feats_share_src``): the source at the vacated cells, and its background
    (``m_share``). Returns (inside, outside, info); ``inside + outside`` is :func:`multiscale_energy` when
    the removal weights are 0."""
    inside, info = multiscale_energy(feats_gen, feats_edit_src, feats_share_src, m_gen, edit_grid, m_share, share_grid,
                                     w_e, 0.0, alpha, beta, edit_mode, m_edit_src, scale_weights, nonempty)
    outside, info_p = multiscale_energy(feats_gen, feats_edit_src, feats_share_src, m_gen, edit_grid, m_share,
                                        share_grid, 0.0, w_p, alpha, beta, edit_mode, m_edit_src, scale_weights, nonempty)
    def _on(name, m):
        return nonempty[name] if nonempty and name in nonempty else m is not None and float(m.sum()) > 0

    n = len(feats_gen)
    weights = [1.0 / n] * n if scale_weights is None else [float(w) for w in scale_weights]
    removal = []
    if m_vacate is not None and (w_contrast != 0 or w_inpaint != 0) and _on("m_vacate", m_vacate):
        for k in range(n):
            fg, fs = feats_gen[k], feats_share_src[k]
            hw = tuple(fg.shape[-2:])
            mv = resize_mask(m_vacate, hw)
            term = fg.new_zeros(fg.shape[0])
            s_c = s_i = None
            if w_contrast != 0:
                s_c = similarity_eq5(fg, fs, mv, None, "local")
                term = term + contrast_term(s_c, w_contrast)
            if w_inpaint != 0 and _on("m_share", m_share):
                s_i = similarity_eq5(fg, fs, mv, None, "global", resize_mask(m_share, tuple(fs.shape[-2:])))
                term = term + inpaint_term(s_i, w_inpaint, alpha, beta)
            inside = inside + weights[k] * term.sum()
            removal.append((None if s_c is None else s_c.detach(), None if s_i is None else s_i.detach()))
    info = [(e, p) for (e, _), (_, p) in zip(info, info_p)]
    return inside, outside, dict(scales=info, removal=removal)


def multiscale_energy(feats_gen: list, feats_edit_src: list, feats_share_src: list, m_gen: torch.Tensor,
                      edit_grid: torch.Tensor | None, m_share: torch.Tensor, share_grid: torch.Tensor | None,
                      w_e: float, w_p: float, alpha: float = ALPHA, beta: float = BETA, edit_mode: str = "local",
                      m_edit_src: torch.Tensor | None = None, scale_weights: list | None = None,
                      nonempty: dict | None = None):
    """Eq. 6 at every feature scale, weighted-averaged over scales (weights default to equal).

    ``feats_gen[k]`` are the generation branch's features at scale k, ``feats_edit_src[k]`` those of the
    branch the edit term reads (guidance, or the reference), ``feats_share_src[k]`` the guidance
    branch's. Masks and grids are given once, on the latent grid, and resized per scale. A term whose
    mask (or weight) is empty is left out; ``nonempty`` ({"m_gen": bool, "m_share": bool}) says so without
    reading the masks back from the device (a sampler calls this every guided step). Returns (L summed
    over the batch, per-scale S values)."""
    n = len(feats_gen)
    if not (n == len(feats_edit_src) == len(feats_share_src)) or n == 0:
        raise ValueError(f"need the same non-zero number of feature scales per branch, got {n}, "
                         f"{len(feats_edit_src)}, {len(feats_share_src)}")
    weights = [1.0 / n] * n if scale_weights is None else [float(w) for w in scale_weights]
    total = feats_gen[0].new_zeros(())
    info = []
    edit_on = w_e != 0 and (nonempty["m_gen"] if nonempty else float(m_gen.sum()) > 0)
    share_on = w_p != 0 and (nonempty["m_share"] if nonempty else float(m_share.sum()) > 0)
    for k in range(n):
        fg = feats_gen[k]
        hw = tuple(fg.shape[-2:])
        term = fg.new_zeros(fg.shape[0])
        s_e = s_p = None
        if edit_on:
            mg = resize_mask(m_gen, hw)
            if edit_mode == "local":
                grid = None if edit_grid is None else resize_grid(edit_grid, hw)
                s_e = similarity_eq5(fg, feats_edit_src[k], mg, grid, "local")
            else:
                src = feats_edit_src[k]
                ms = None if m_edit_src is None else resize_mask(m_edit_src, tuple(src.shape[-2:]))
                s_e = similarity_eq5(fg, src, mg, None, "global", ms)
            term = term + energy_term(s_e, w_e, alpha, beta)
        if share_on:
            mp = resize_mask(m_share, hw)
            grid = None if share_grid is None else resize_grid(share_grid, hw)
            s_p = similarity_eq5(fg, feats_share_src[k], mp, grid, "local")
            term = term + energy_term(s_p, w_p, alpha, beta)
        total = total + weights[k] * term.sum()
        info.append((None if s_e is None else s_e.detach(), None if s_p is None else s_p.detach()))
    return total, info


# --- Eq. 7 --------------------------------------------------------------------------------------

def score_with_energy(eps: torch.Tensor, grad_z: torch.Tensor, scale: float) -> torch.Tensor:
    """Eq. 7 in noise-prediction form: eps~ = eps + scale * grad_z L.

    eps ~ -sqrt(1 - alpha_bar) * grad log q(z), so adding the energy's gradient to eps adds
    -grad L to the score: the next latent moves downhill in L (DragonDiffusion's update)."""
    return eps + scale * grad_z


def rms_normalised_gradient(grad_z: torch.Tensor, eps: torch.Tensor, region: torch.Tensor | None = None,
                            tiny: float = 1e-12) -> torch.Tensor:
    """``grad_z`` rescaled, per batch entry, so that its RMS over ``region`` (a [h, w] or [B, h, w]
    0/1 mask on the latent grid; all cells when None or empty) equals the RMS of ``eps`` there.

    With it, Eq. 7's scale is dimensionless: s = 1 shifts the prediction as much as the noise
    prediction itself, whatever the model, resolution, mask size or feature magnitudes."""
    if region is None:
        w = torch.ones_like(eps[:, :1])
    else:
        w = _mask4(region, eps).to(eps.dtype)
        w = torch.where(w.sum(dim=(1, 2, 3), keepdim=True) > 0, w, torch.ones_like(w))  # empty region: all cells
    ms_eps = (w * eps.pow(2)).sum(dim=(1, 2, 3), keepdim=True)
    ms_grad = (w * grad_z.pow(2)).sum(dim=(1, 2, 3), keepdim=True)
    return grad_z * torch.sqrt(ms_eps / ms_grad.clamp_min(tiny))


def x0_guided_denoised(denoised: torch.Tensor, grad_z: torch.Tensor, sigma: float, sigma_next: float,
                       scale: float) -> torch.Tensor:
    """DragonDiffusion's update in sigma space: the energy's gradient joins the noise prediction of the
    x0 estimate only, the direction term keeps the unguided noise:

        x_next = (x - sigma * (eps + s * g)) + sigma_next * eps = x_next(unguided) - sigma * s * g.

    A guider returns a denoised prediction and the sampler (Euler / DDIM) steps
    ``x_next = x + (sigma_next - sigma) * (x - denoised) / sigma``; that step lands on the update above for

        denoised~ = denoised - s * g * sigma^2 / (sigma - sigma_next).

    (Adding s * g to eps in both terms, Eq. 7 read literally, moves x by only (sigma - sigma_next) * s * g.)"""
    if not sigma > sigma_next:
        raise ValueError(f"sigma {sigma} must exceed sigma_next {sigma_next} (a denoising step)")
    return denoised - (scale * sigma * sigma / (sigma - sigma_next)) * grad_z
