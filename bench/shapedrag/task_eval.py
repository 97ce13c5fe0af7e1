"""ShapeDrag-GT evaluation: every task of the pack scored against its rendered ground truth.

    scripts/evaluate --shapedrag --task all|drag|move,resize,... [--n 4] [--seed 0] [--methods none,naive,default]
                     [--out DIR] [--dual-steps 20]

Everything runs in this process through the real ComfyUI host and the pack's own nodes (as evaluate.py):
CheckpointLoaderSimple, CLIPTextEncode, VAEEncode / VAEDecode, KSamplerAdvanced, SamplerCustomAdvanced and
the pack's nodes. The samples come from tasks.py (no files needed); the metrics from task_metrics.py.

Methods (every task has none, naive and default):

  none     no edit, through the same inversion and step count as the task's default:
           drag* / inpaint (AttentionDrag tasks): the inversion round trip (Inversion with Attention Capture,
                  10 DDIM steps of 'simple', edit step 5, no CFG, then KSamplerAdvanced from step 5);
           move / resize / paste / appearance / outpaint / style / landmarks (dual-branch tasks): the PNI
                  reconstruction at the default's step count (--dual-steps): PNI Invert of the source as the
                  default runs it, then PNI Guider with target = source + SamplerCustomAdvanced (DisableNoise,
                  euler, PNI's sigmas and z_T); outpaint: that on a grey canvas of the GT's size;
           prompt: the 10-step round trip (the one its naive prompt swap regenerates from)
  naive    drag / drag_multi / drag_two / landmarks / move: latent copy-paste of the user mask by the drag
           (per pair's object; landmarks: the mean landmark shift) at the edit step; resize: the mask's latent
           cells rescaled about its box centre (nearest); paste / appearance: pixel paste of the reference
           object; outpaint: edge replication; inpaint: the hole filled with the mean colour around it;
           style: the reference image with the source's objects pasted on it; prompt: the round trip
           regenerated under the target prompt (a plain prompt swap, no PNI)
  default  the pack's default for the task, as its example workflows wire it:
           drag*: AttentionDrag (attention_drag.json: AutoMask tau 4 reference 'mean' united with the user
                  mask, Semantic Move with its default movement ('rigid'), Attention Interpolate 'attention',
                  KV consistency on the capture layers), 10 steps 'simple', edit at 5, no CFG (the ShapeDrag
                  model is not LCM);
           inpaint: AttentionDrag inpainting (attention_drag_inpaint.json: Attention Interpolate mode
                  'inpaint', KV consistency on: 22.43 dB inside the hole against 21.75 off, seed 0, 4 scenes);
           move / resize / paste / appearance / outpaint / style / landmarks: PNI Invert (20 steps,
                  ddim_uniform, the node's other defaults) + Dual-Branch Guided Sampler with the node's
                  defaults for the task (euler, w_edit 4, w_share 6, energy 40, 60 % guided, KV replace);
                  the reference tasks invert the reference the same way;
           prompt: PNI Invert (source prompt) + PNI Guider (target prompt) + SamplerCustomAdvanced
                  (DisableNoise, ddim, PNI's sigmas), pni_edit.json.
  ad-eq6   drag tasks only: AttentionDrag with the paper's movement, Semantic Move's 'attention ratio (Eq. 6)',
           the rest as default (the pack's default until [attentiondrag-fidelity] measured 'rigid' better).

Prompts: the ShapeDrag model's own prompt (scenes.PROMPT) everywhere except the prompt task, whose source and
target prompts name the edited object's colour and shape (tasks.prompt_for).

Metrics (task_metrics.py): md, iou (every object), iou_edit (only the objects the edit moves or changes),
psnr_in / psnr_out / ssim_out, lost, duplicated, hue_err, seconds. A lost moved object scores an MD of
md0 + the image diagonal / 4, strictly worse than leaving it in place (md0).

Output under --out: summary.json (task -> method -> metric -> mean), samples.json (every sample's metrics),
report.html (per task: source | instruction | ground truth | each method), the PNGs it shows, and the
Markdown table printed at the end.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (os.path.join(REPO, "tests"), os.path.join(REPO, "bench"), os.path.join(REPO, "scripts")):
    if p not in sys.path:
        sys.path.insert(0, p)

import harness  # noqa: E402
from shapedrag import evaluate, scenes, task_metrics, tasks  # noqa: E402

BASE_METHODS = ("none", "naive", "default")
EXTRA_METHODS = {"ad-eq6": ("drag", "drag_multi", "drag_two")}
DUAL_TASKS = ("move", "resize", "paste", "appearance", "outpaint", "style", "landmarks")
DRAG_TASKS = ("drag", "drag_multi", "drag_two")
METHOD_NAMES = {"none": "no edit", "naive": "naive", "default": "pack default", "ad-eq6": "AttentionDrag, paper's Eq. 6 movement"}
DEFAULT_DESCRIPTION = {
    **{t: "AttentionDrag (AutoMask mean + rigid movement + attention fill + KV)" for t in DRAG_TASKS},
    "inpaint": "AttentionDrag inpaint (attention fill, KV on)",
    **{t: f"PNI + Dual-Branch Guided Sampler (task {t if t != 'resize' else 'move'})" for t in DUAL_TASKS},
    "prompt": "PNI Invert + PNI Guider",
}
NONE_DESCRIPTION = {
    **{t: "10-step round trip" for t in DRAG_TASKS + ("inpaint", "prompt")},
    **{t: "PNI reconstruction" for t in DUAL_TASKS},
}
NAIVE_DESCRIPTION = {
    **{t: "latent copy-paste" for t in DRAG_TASKS + ("move", "landmarks")}, "resize": "latent rescale",
    "paste": "pixel paste", "appearance": "pixel paste", "outpaint": "edge replication",
    "inpaint": "ring-mean fill", "style": "reference + pasted objects", "prompt": "prompt swap (no PNI)",
}


def _t(x: np.ndarray):
    import torch
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]


def _np(img) -> np.ndarray:
    return img[0].float().cpu().numpy()


class TaskEvaluator(evaluate.Evaluator):
    """One model load; run(sample, methods) -> {method: (image float [H, W, 3], seconds)}."""

    def __init__(self, dual_steps: int = 20, tau: float = 4.0, **kw):
        super().__init__(dual_steps=dual_steps, tau=tau, **kw)     # tau: AutoMask's default, as the workflow

    # ----------------------------------------------------------------- shared pieces
    def encode(self, img: np.ndarray):
        return evaluate.core(self.nodes, "VAEEncode", pixels=_t(img), vae=self.vae)[0]

    def decode(self, latent) -> np.ndarray:
        return _np(evaluate.core(self.nodes, "VAEDecode", samples=latent, vae=self.vae)[0])

    def points(self, s: tasks.TaskSample):
        return harness.run_node("DragFusionPointsJSON", image=_t(s.source), points_json=tasks.points_json(s)).result[0]

    def capture(self, s, pos, points=None):
        latent = self.encode(s.source)
        kw = dict(points=points) if points is not None else {}
        z, cap = harness.run_node("DragFusionInvertCapture", model=self.model, latent=latent, steps=self.steps,
                                  edit_step=self.edit_step, scheduler=self.scheduler, cfg=1.0, layers=self.layers,
                                  capture_values=True, positive=pos, **kw).result
        return z, cap

    def regen(self, model, z, pos, neg) -> np.ndarray:
        return _np(self.regenerate(model, z, pos, neg))

    def pni_invert(self, img: np.ndarray, cond):
        inv, z_t, sigmas = harness.run_node("DragFusionPNIInvert", model=self.model, latent=self.encode(img), source=cond,
                                            steps=self.dual_steps, cfg=5.0, lam=0.02, prox="L1", eta=0.1,
                                            guidance_until=self.dual_steps, scheduler="ddim_uniform").result
        return inv, z_t, sigmas

    # ----------------------------------------------------------------- methods
    def run(self, s: tasks.TaskSample, methods) -> dict:
        pos, neg = self.cond(scenes.PROMPT)
        mask = _t(s.instruction["mask"].astype(np.float32))[0][None] if "mask" in s.instruction else None
        pts = self.points(s) if "points" in s.instruction else None
        out = {}
        need_capture = any((m == "none" and s.task not in DUAL_TASKS) or m == "ad-eq6"
                           or (m == "default" and s.task in DRAG_TASKS + ("inpaint",))
                           or (m == "naive" and s.task in DRAG_TASKS + ("move", "resize", "landmarks", "prompt"))
                           for m in methods)
        t_inv, z, cap = 0.0, None, None
        if need_capture:
            t0 = time.perf_counter()
            z, cap = self.capture(s, pos, pts)
            t_inv = time.perf_counter() - t0
        for m in methods:
            t1 = time.perf_counter()
            img, shared = self._method(m, s, pos, neg, z, cap, pts, mask)
            out[m] = (img, time.perf_counter() - t1 + (t_inv if shared else 0.0))
        return out

    def _method(self, m, s, pos, neg, z, cap, pts, mask):
        """-> (image, uses the shared capture inversion)."""
        t = s.task
        if m == "none" and t in DUAL_TASKS:
            img = self.pni_reconstruct(s.source, pos)
            return (tasks.none_outpaint(img, s.instruction["pad"]) if t == "outpaint" else img), False
        if m == "none":
            img = self.regen(self.model, z, pos, neg)
            return (tasks.none_outpaint(img, s.instruction["pad"]) if t == "outpaint" else img), True
        if m == "naive":
            return self._naive(s, pos, neg, z)
        if m == "ad-eq6" or (m == "default" and t in DRAG_TASKS):
            movement = "attention ratio (Eq. 6)" if m == "ad-eq6" else None
            return self.attentiondrag(z, cap, pts, mask, pos, neg, movement=movement), True
        if m == "default" and t == "inpaint":
            return self.attentiondrag(z, cap, None, mask, pos, neg, inpaint=True), True
        if m == "default" and t in DUAL_TASKS:
            return self._dual(s, pos, pts, mask), False
        if m == "default" and t == "prompt":
            return self._pni_edit(s), False
        raise ValueError(f"method {m!r} is not defined for task {t!r}")

    def attentiondrag(self, z, cap, pts, mask, pos, neg, inpaint: bool = False, automask: str = "union",
                      tau: float | None = None, reference: str | None = None, movement: str | None = None,
                      fill: str = "attention", kv: bool = True) -> np.ndarray:
        """The AttentionDrag edit after the inversion, through the pack's nodes. Drag: AutoMask (``automask``
        'union' with the user mask, 'alone', or 'user': the user mask only), Semantic Move (``movement``; None:
        the node's default), Attention Interpolate, KV Consistency; inpaint: Attention Interpolate mode
        'inpaint' over the user mask, KV Consistency. ``tau`` / ``reference`` default to the evaluator's."""
        run = harness.run_node
        if inpaint:
            z2 = run("DragFusionAttentionInterpolate", capture=cap, latent=z, mask=mask, fill=fill, mode="inpaint",
                     seed=0).result[0]
        else:
            if automask == "user":
                edit_mask = mask
            else:
                kw = dict(mask=mask, mask_mode="union") if automask == "union" else {}
                edit_mask = run("DragFusionAutoMask", capture=cap, points=pts, tau=self.tau if tau is None else tau,
                                reference=self.reference if reference is None else reference, **kw).result[0]
            z2, blank = run("DragFusionSemanticMove", capture=cap, latent=z, points=pts, mask=edit_mask,
                            **({} if movement is None else {"movement_mode": movement})).result
            z2 = run("DragFusionAttentionInterpolate", capture=cap, latent=z2, mask=blank, fill=fill, mode="drag",
                     seed=0).result[0]
        model = self.model
        if kv:
            model = run("DragFusionKVConsistency", model=self.model, capture=cap, enabled=True, strength=1.0).result[0]
        return self.regen(model, z2, pos, neg)

    def _naive(self, s, pos, neg, z):
        t, ins = s.task, s.instruction
        if t == "paste":
            return tasks.pixel_paste(s.source, ins["reference"], ins["reference_mask"], *ins["offset"]), False
        if t == "appearance":
            return tasks.naive_appearance(s), False
        if t == "outpaint":
            return tasks.naive_outpaint(s), False
        if t == "inpaint":
            return tasks.naive_inpaint(s), False
        if t == "style":
            h, sat, v = scenes.rgb_to_hsv(s.source)
            objs = tasks.dilate((sat >= 0.4) & (v >= 0.3), 1)
            return np.where(objs[..., None], s.source, ins["reference"]).astype(np.float32), False
        if t == "prompt":
            p2, n2 = self.cond(ins["target_prompt"])
            return self.regen(self.model, z, p2, n2), True
        moves = []
        if t in DRAG_TASKS:
            from scipy.ndimage import label
            lab, _ = label(ins["mask"])
            for (hx, hy), (tx, ty) in ins["points"]:
                comp = lab == lab[hy, hx] if lab[hy, hx] else ins["mask"]
                if not any(np.array_equal(comp, c) for c, _ in moves):
                    moves.append((comp, ((tx - hx) / 8, (ty - hy) / 8, 1.0)))
        elif t == "move":
            moves.append((ins["mask"], (ins["offset"][0] / 8, ins["offset"][1] / 8, 1.0)))
        elif t == "resize":
            moves.append((ins["mask"], (0.0, 0.0, ins["scale"])))
        elif t == "landmarks":
            d = np.asarray(ins["landmarks"]["target"]) - np.asarray(ins["landmarks"]["source"])
            moves.append((ins["mask"], (d[:, 0].mean() / 8, d[:, 1].mean() / 8, 1.0)))
        return self.regen(self.model, evaluate.latent_copy(z, moves), pos, neg), True

    def dual_inputs(self, s, pos, pts, mask) -> tuple:
        """(INVERSION of the source, the Dual-Branch Guided Sampler's task inputs) for a sample."""
        t, ins = s.task, s.instruction
        inv = self.pni_invert(s.source, pos)[0]
        kw = dict(task="move" if t == "resize" else t)
        if t in DRAG_TASKS:
            kw.update(points=pts, mask=mask)
        elif t in ("move", "resize"):
            kw.update(mask=mask, offset_x=float(ins["offset"][0]), offset_y=float(ins["offset"][1]),
                      scale=float(ins["scale"]))
        elif t in ("paste", "appearance", "style"):
            kw.update(reference=self.pni_invert(ins["reference"], pos)[0])
            if t != "style":
                kw.update(reference_mask=_t(ins["reference_mask"].astype(np.float32))[0][None])
            if t == "paste":
                kw.update(offset_x=float(ins["offset"][0]), offset_y=float(ins["offset"][1]), scale=float(ins["scale"]))
            if t == "appearance":
                kw.update(mask=mask)
        elif t == "outpaint":
            left, right, top, bottom = ins["pad"]
            kw.update(pad_left=left, pad_right=right, pad_top=top, pad_bottom=bottom)
        elif t == "landmarks":
            kw.update(landmarks_json=tasks.landmarks_json(s))
        return inv, kw

    def _dual(self, s, pos, pts, mask) -> np.ndarray:
        inv, kw = self.dual_inputs(s, pos, pts, mask)
        out = harness.run_node("DragFusionDualBranchGuidedSampler", model=self.model, inversion=inv, target=pos,
                               sampler_name="euler", **kw).result[0]          # the node's defaults otherwise
        return self.decode(out)

    def pni_sample(self, inv, z_t, sigmas, target, sampler_name: str) -> np.ndarray:
        """PNI Guider (``target``) + SamplerCustomAdvanced (DisableNoise, PNI's sigmas and z_T), decoded."""
        guider = harness.run_node("DragFusionPNIGuider", model=self.model, inversion=inv, target=target).result[0]
        noise = evaluate.core(self.nodes, "DisableNoise")[0]
        sampler = evaluate.core(self.nodes, "KSamplerSelect", sampler_name=sampler_name)[0]
        out = evaluate.core(self.nodes, "SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                            latent_image=z_t)[0]
        return self.decode(out)

    def pni_reconstruct(self, img: np.ndarray, cond) -> np.ndarray:
        """The dual-branch tasks' no-edit baseline: PNI Invert (as the default inverts the source, --dual-steps)
        and back with the PNI Guider at target = source, euler (the dual-branch default's sampler)."""
        inv, z_t, sigmas = self.pni_invert(img, cond)
        return self.pni_sample(inv, z_t, sigmas, cond, "euler")

    def _pni_edit(self, s) -> np.ndarray:
        src, _ = self.cond(s.instruction["source_prompt"])
        tgt, _ = self.cond(s.instruction["target_prompt"])
        inv, z_t, sigmas = self.pni_invert(s.source, src)
        return self.pni_sample(inv, z_t, sigmas, tgt, "ddim")


# --------------------------------------------------------------------------- pictures
def _draw_line(img, p0, p1, colour):
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    for t in np.linspace(0, 1, n):
        x, y = int(round(p0[0] + t * (p1[0] - p0[0]))), int(round(p0[1] + t * (p1[1] - p0[1])))
        if 0 <= y < img.shape[0] and 0 <= x < img.shape[1]:
            img[y, x] = colour


def _dot(img, x, y, colour, r=1):
    x, y = int(round(x)), int(round(y))
    img[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = colour


def instruction_picture(s: tasks.TaskSample) -> np.ndarray:
    """The source with the mask tinted, arrows handle (red) -> target (blue), landmarks; the reference (with its
    mask tinted) to the right for the reference tasks."""
    ins = s.instruction
    img = s.source.copy()
    if "mask" in ins:
        img[ins["mask"]] = img[ins["mask"]] * 0.6 + np.array([1.0, 1.0, 0.3]) * 0.4
    for (hx, hy), (tx, ty) in ins.get("points", []):
        _draw_line(img, (hx, hy), (tx, ty), (1, 1, 1))
        _dot(img, hx, hy, (1, 0, 0))
        _dot(img, tx, ty, (0, 0, 1))
    if "offset" in ins and "mask" in ins and any(ins["offset"]):
        c = tasks.centroid(ins["mask"])
        _draw_line(img, c, (c[0] + ins["offset"][0], c[1] + ins["offset"][1]), (1, 1, 1))
        _dot(img, c[0] + ins["offset"][0], c[1] + ins["offset"][1], (0, 0, 1))
    if "landmarks" in ins:
        for (x0, y0), (x1, y1) in zip(ins["landmarks"]["source"], ins["landmarks"]["target"]):
            _draw_line(img, (x0, y0), (x1, y1), (1, 1, 1))
            _dot(img, x1, y1, (0, 0, 1), 0)
    if "reference" in ins:
        ref = ins["reference"].copy()
        if "reference_mask" in ins:
            rm = ins["reference_mask"]
            ref[rm] = ref[rm] * 0.6 + np.array([1.0, 1.0, 0.3]) * 0.4
        img = np.concatenate([img, np.ones((img.shape[0], 4, 3), np.float32), ref], 1)
    return img


def instruction_text(s: tasks.TaskSample) -> str:
    ins = s.instruction
    parts = []
    if "points" in ins:
        parts.append("pairs " + ", ".join(f"({h[0]},{h[1]})->({t[0]},{t[1]})" for h, t in ins["points"]))
    if "offset" in ins and any(ins["offset"]):
        parts.append(f"offset ({ins['offset'][0]:g}, {ins['offset'][1]:g}) px")
    if ins.get("scale", 1.0) != 1.0:
        parts.append(f"scale {ins['scale']:g}")
    if "pad" in ins:
        parts.append("pad (l, r, t, b) " + str(tuple(ins["pad"])))
    if "landmarks" in ins:
        parts.append(f"{len(ins['landmarks']['source'])} landmarks")
    if "target_prompt" in ins:
        parts.append(f"'{ins['source_prompt']}' -> '{ins['target_prompt']}'")
    if s.task == "style":
        parts.append(f"texture {ins['source_texture']} -> {ins['reference_texture']}")
    return "; ".join(parts)


def save_png(img: np.ndarray, path: str):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)


# --------------------------------------------------------------------------- the run
def methods_for(task: str, methods) -> list:
    return [m for m in methods if m in BASE_METHODS or task in EXTRA_METHODS.get(m, ())]


def parse_tasks(text: str) -> list:
    if text.strip() == "all":
        return list(tasks.TASKS)
    out = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in out if t not in tasks.TASKS]
    if bad:
        raise ValueError(f"unknown task(s) {bad}; choose from {list(tasks.TASKS)} or 'all'")
    return out


def evaluate_tasks(task_list, n: int = 4, seed: int = 0, methods=BASE_METHODS + tuple(EXTRA_METHODS),
                   out_dir: str | None = None, progress: bool = True, html_rows: int = 4, **kw) -> dict:
    """-> {"summary": {task: {method: {metric: mean}}}, "samples": {task: {method: [metrics]}}, ...}"""
    evaluate.ensure_checkpoint()
    ev = TaskEvaluator(**kw)
    import comfy.utils
    bars = comfy.utils.PROGRESS_BAR_ENABLED
    comfy.utils.set_progress_bar_enabled(False)
    try:
        return _run(ev, task_list, n, seed, methods, out_dir, progress, html_rows)
    finally:
        comfy.utils.set_progress_bar_enabled(bars)


def _run(ev, task_list, n, seed, methods, out_dir, progress, html_rows):
    import torch
    jobs = [(t, i) for t in task_list for i in range(n)]
    try:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="ShapeDrag-GT", disable=not progress, file=sys.stdout)
    except ImportError:
        bar = None
    rows = {t: {m: [] for m in methods_for(t, methods)} for t in task_list}
    pictures = {t: [] for t in task_list}
    for t, i in jobs:
        if bar is not None:
            bar.set_postfix_str(f"{t} {i + 1}/{n}")
        s = tasks.make_task(t, seed, i)
        with torch.inference_mode():
            results = ev.run(s, methods_for(t, methods))
        for m, (img, secs) in results.items():
            r = task_metrics.task_score(img, s, secs)
            r.update(index=i)
            rows[t][m].append(r)
        if out_dir and i < html_rows:
            base = os.path.join(out_dir, "img", t, f"{i:03d}")
            save_png(s.source, base + "_source.png")
            save_png(instruction_picture(s), base + "_instruction.png")
            save_png(s.gt, base + "_gt.png")
            for m, (img, _) in results.items():
                save_png(img, f"{base}_{m}.png")
            pictures[t].append(dict(index=i, text=instruction_text(s), methods=list(results),
                                    scores={m: rows[t][m][-1] for m in results}))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    summary = {t: {m: task_metrics.summarize(r) for m, r in ms.items()} for t, ms in rows.items()}
    report = dict(n=n, seed=seed, checkpoint=evaluate.CKPT, steps=ev.steps, edit_step=ev.edit_step,
                  dual_steps=ev.dual_steps, summary=summary, samples=rows)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, default=float)
        with open(os.path.join(out_dir, "samples.json"), "w") as f:
            json.dump({k: v for k, v in report.items() if k != "summary"}, f, indent=1, default=float)
        with open(os.path.join(out_dir, "table.md"), "w") as f:
            f.write(table(report) + "\n")
        write_html(report, pictures, os.path.join(out_dir, "report.html"))
    return report


def _fmt(v, k):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if k in ("lost", "duplicated"):
        return f"{v:.2f}"
    if k in ("iou", "iou_edit", "ssim_out"):
        return f"{v:.3f}"
    return f"{v:.2f}"


COLUMNS = ("md", "iou", "iou_edit", "psnr_in", "psnr_out", "ssim_out", "lost", "duplicated", "hue_err", "seconds")


def table(report: dict) -> str:
    """One Markdown table: a row per task and method; the task's defining metric in bold."""
    lines = [f"ShapeDrag-GT: {report['n']} samples per task (seed {report['seed']}), {report['checkpoint']}; "
             f"AttentionDrag {report['steps']} steps (edit at {report['edit_step']}), PNI / dual-branch "
             f"{report['dual_steps']} steps; iou_edit: IoU over the edited objects only; a lost moved object's "
             f"md is md0 + diagonal/4; lost / duplicated: mean objects per sample",
             "",
             "| task | method | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for t, ms in report["summary"].items():
        key = task_metrics.DEFINING[t][0]
        for m, s in ms.items():
            name = METHOD_NAMES.get(m, m)
            if m == "default":
                name += f" ({DEFAULT_DESCRIPTION[t]})"
            elif m == "none":
                name += f" ({NONE_DESCRIPTION[t]})"
            elif m == "naive":
                name += f" ({NAIVE_DESCRIPTION[t]})"
            cells = []
            for k in COLUMNS:
                c = _fmt(s.get(k), k)
                cells.append(f"**{c}**" if k == key and c != "-" else c)
            lines.append(f"| {t} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_html(report: dict, pictures: dict, path: str):
    out = ["<!doctype html><meta charset='utf-8'><title>ShapeDrag-GT</title>",
           "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px} img{image-rendering:pixelated;"
           "height:160px} table{border-collapse:collapse} .m{font-size:11px;color:#333}</style>",
           f"<h1>ShapeDrag-GT (seed {report['seed']}, {report['n']} samples per task)</h1>",
           "<pre>" + html.escape(table(report)) + "</pre>"]
    for t, pics in pictures.items():
        if not pics:
            continue
        key = task_metrics.DEFINING[t][0]
        out.append(f"<h2>{t}</h2><p>default: {html.escape(DEFAULT_DESCRIPTION[t])}; none: "
                   f"{html.escape(NONE_DESCRIPTION[t])}; naive: "
                   f"{html.escape(NAIVE_DESCRIPTION[t])}; defining metric: {key}</p><table>")
        methods = pics[0]["methods"]
        out.append("<tr><th>source</th><th>instruction</th><th>ground truth</th>"
                   + "".join(f"<th>{html.escape(METHOD_NAMES.get(m, m))}</th>" for m in methods) + "</tr>")
        for p in pics:
            b = f"img/{t}/{p['index']:03d}"
            cells = [f"<td><img src='{b}_source.png'></td>",
                     f"<td><img src='{b}_instruction.png'><div class='m'>{html.escape(p['text'])}</div></td>",
                     f"<td><img src='{b}_gt.png'></td>"]
            for m in methods:
                sc = p["scores"][m]
                desc = ", ".join(f"{k} {_fmt(sc.get(k), k)}" for k in ("md", "iou", "iou_edit", "psnr_in", "hue_err",
                                                                    "seconds")
                                 if k in sc and not (isinstance(sc[k], float) and math.isnan(sc[k])))
                cells.append(f"<td><img src='{b}_{m}.png'><div class='m'>{html.escape(desc)}</div></td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def main(argv=None):
    ap = argparse.ArgumentParser(prog="scripts/evaluate --shapedrag --task", description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="all", help=f"'all' or a comma list from {list(tasks.TASKS)}")
    ap.add_argument("--n", type=int, default=4, help="samples per task (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(BASE_METHODS + tuple(EXTRA_METHODS)),
                    help="comma list from none, naive, default, ad-eq6 (drag tasks)")
    ap.add_argument("--dual-steps", type=int, default=20, help="PNI / dual-branch DDIM steps (the workflows' 20)")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "shapedrag_gt"))
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    a = ap.parse_args(argv)
    try:
        task_list = parse_tasks(a.task)
    except ValueError as e:
        ap.error(str(e))
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    bad = [m for m in methods if m not in BASE_METHODS and m not in EXTRA_METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}")
    if not os.path.isfile(evaluate.WEIGHTS):
        print(f"evaluate --shapedrag: no trained weights at {evaluate.WEIGHTS}; run scripts/train_shapedrag.py",
              file=sys.stderr)
        return 2
    t0 = time.time()
    report = evaluate_tasks(task_list, a.n, a.seed, methods, a.out, progress=not a.quiet, dual_steps=a.dual_steps)
    print(table(report))
    print(f"\nresults: {a.out}/summary.json (task -> method -> metric -> mean), samples.json, report.html "
          f"({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
