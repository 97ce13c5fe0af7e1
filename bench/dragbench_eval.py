"""Evaluate the AttentionDrag edit over a DragBench- or Drag100-format folder, in-process through
the pack's own nodes; saves every output and writes an HTML report with an image grid and a
summary table. Computes MD (DIFT on an SD-2.1 checkpoint) and 1-LPIPS when their weights are in
ComfyUI's model folders, says which file is missing otherwise, and always reports time per point.

    scripts/evaluate data/dragbench-dev [--subset 4] [--ckpt NAME] [--dift-ckpt NAME]
                     [--methods attentiondrag,dual-branch] [--dual-steps 20]

--methods picks the edits, each run on the same samples and scored by the same code:
  attentiondrag  (the default) the AttentionDrag workflow: Inversion with Attention Capture, AutoMask
                 united with the sample's mask, Semantic Move, Attention Interpolate, KV Consistency
                 (--steps, --edit-step, --tau), LCM sampling;
  dual-branch    VersaFusion's dual-branch drag (dual_branch_drag.json): PNI Invert of the image with its
                 prompt (--dual-steps DDIM steps), then the Dual-Branch Guided Sampler, task drag, euler,
                 the sample's points and its mask as the editable region, every other input at the
                 node's own default, read from its schema at run time.
With more than one method the report has a comparison table (mean MD, mean 1-LPIPS, seconds per edit
and per point, one row per method) and every sample's results side by side.

FOLDER is any DragBench- or Drag100-format folder: the repository's own samples (data/dragbench-dev,
data/drag100), or optionally a larger set such as ../shared/data/dragbench-dev (20 samples) where present.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import edit_pipeline as ep  # noqa: E402
import metrics  # noqa: E402

REPO = ep.REPO
SD21_HINTS = ("v2-1", "sd21", "sd2.1", "2-1_", "2.1")
METHODS = {"attentiondrag": "AttentionDrag", "dual-branch": "VersaFusion dual-branch"}


def result_name(method: str) -> str:
    """The result PNG of a method in a sample's folder (AttentionDrag's keeps its old name)."""
    return "result" if method == "attentiondrag" else f"result_{method}"


def find_samples(root: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        if ("drag_instruction.json" in files and "original_image.png" in files) or \
           ("points.json" in files and "original.jpg" in files):
            out.append(dirpath)
    return sorted(out)


def pack_module(nodes, node_id: str):
    return sys.modules[nodes.NODE_CLASS_MAPPINGS[node_id].__module__]


def to_png(image: torch.Tensor, path: str):
    arr = (image[0, ..., :3].float().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(arr).save(path)


def mask_png(mask: torch.Tensor, h: int, w: int, path: str):
    m = mask[0] if mask.ndim == 3 else mask
    m = torch.nn.functional.interpolate(m[None, None].float(), (h, w), mode="nearest")[0, 0]
    Image.fromarray((m.cpu().numpy() > 0.5).astype(np.uint8) * 255).save(path)


def pick_sd21(names: list[str], wanted: str | None) -> str | None:
    if wanted:
        return wanted if wanted in names else None
    return next((n for n in names if any(h in n.lower() for h in SD21_HINTS)), None)


class Scorer:
    """MD by DIFT and 1-LPIPS, each only where its weights exist."""

    def __init__(self, nodes, dift_ckpt: str | None):
        import folder_paths
        self.nodes = nodes
        self.notes = []
        self.dift = None
        names = folder_paths.get_filename_list("checkpoints")
        name = pick_sd21(names, dift_ckpt)
        if name:
            model, clip, vae = ep.core(nodes, "CheckpointLoaderSimple", ckpt_name=name)[:3]
            self.dift = (model, clip, vae, name)
        else:
            self.notes.append("MD: no SD-2.1 checkpoint in models/checkpoints (a file whose name contains "
                              f"one of {SD21_HINTS}, or --dift-ckpt NAME); MD not computed")
        backbone, heads, msg = metrics.find_lpips_files(folder_paths.models_dir)
        self.lpips = metrics.Lpips(metrics.load_state(backbone), metrics.load_state(heads)) if not msg else None
        if msg:
            self.notes.append(f"1-LPIPS: {msg}; 1-LPIPS not computed")

    def md(self, original, edited, points, prompt) -> float | None:
        if self.dift is None:
            return None
        model, clip, vae, _ = self.dift
        cond = ep.core(self.nodes, "CLIPTextEncode", clip=clip, text=prompt)[0][0][0]
        feats = []
        for img in (original, edited):
            lat = ep.core(self.nodes, "VAEEncode", pixels=img, vae=vae)[0]["samples"]
            lat = model.model.process_latent_in(lat)
            feats.append(metrics.dift_features(model, lat, cond))
        h, w = original.shape[1:3]
        matches = metrics.match_points(feats[0], feats[1], [p[0] for p in points.pairs], (h, w))
        return metrics.mean_distance(matches, [p[1] for p in points.pairs])

    def one_minus_lpips(self, original, edited) -> float | None:
        if self.lpips is None:
            return None
        a = original[..., :3].permute(0, 3, 1, 2).float() * 2 - 1
        b = edited[..., :3].permute(0, 3, 1, 2).float() * 2 - 1
        if b.shape[-2:] != a.shape[-2:]:
            b = torch.nn.functional.interpolate(b, a.shape[-2:], mode="bilinear", align_corners=False)
        return float(1 - self.lpips(a, b).mean())


def evaluate(args) -> dict:
    models = ep.load_models(args.ckpt)
    nodes = models.nodes
    dragbench = pack_module(nodes, "DragFusionLoadDragBenchSample")
    draw = sys.modules[dragbench.__name__.rsplit(".", 1)[0] + "._draw"]
    samples = find_samples(args.folder)
    if not samples:
        raise SystemExit(f"no DragBench / Drag100 samples under {args.folder}")
    if args.subset:
        step = max(1, len(samples) // args.subset)
        samples = samples[::step][:args.subset]
    os.makedirs(args.out, exist_ok=True)
    scorer = Scorer(nodes, args.dift_ckpt)
    rows = []
    import comfy.utils
    bar = comfy.utils.ProgressBar(len(samples))
    methods = list(getattr(args, "methods", None) or ["attentiondrag"])
    bar = comfy.utils.ProgressBar(len(samples) * len(methods))
    for i, path in enumerate(samples, 1):
        name = os.path.relpath(path, args.folder).replace(os.sep, "__")
        image, points, mask, prompt = dragbench.load_sample(path, args.size)
        h, w = image.shape[1:3]
        d = os.path.join(args.out, name)
        os.makedirs(d, exist_ok=True)
        to_png(image, os.path.join(d, "original.png"))
        arrows = draw.draw_arrows(draw.to_uint8(image[0]), points.pairs)
        Image.fromarray(arrows).save(os.path.join(d, "arrows.png"))
        if "attentiondrag" not in methods:
            mask_png(mask, h, w, os.path.join(d, "mask.png"))
        for method in methods:
            t0 = time.perf_counter()
            if method == "attentiondrag":
                edit = ep.attention_drag(models, image, points, mask, prompt, steps=args.steps,
                                         edit_step=args.edit_step, tau=args.tau, seed=i)
            else:
                edit = ep.dual_branch_drag(models, image, points, mask, prompt,
                                           steps=getattr(args, "dual_steps", 20))
            dt = time.perf_counter() - t0
            if method == "attentiondrag":
                mask_png(edit.mask, h, w, os.path.join(d, "mask.png"))
            to_png(edit.image, os.path.join(d, result_name(method) + ".png"))
            row = {"sample": name, "method": method, "pairs": len(points.pairs), "seconds": round(dt, 3),
                   "seconds_per_point": round(dt / len(points.pairs), 3), "size": f"{w}x{h}", "prompt": prompt,
                   "md": scorer.md(image, edit.image, points, prompt),
                   "one_minus_lpips": scorer.one_minus_lpips(image, edit.image)}
            rows.append(row)
            bar.update(1)
            md = "-" if row["md"] is None else f"{row['md']:.1f}px"
            lp = "-" if row["one_minus_lpips"] is None else f"{row['one_minus_lpips']:.3f}"
            tag = f" [{method}]" if len(methods) > 1 else ""
            print(f"[evaluate] {i}/{len(samples)} {name}{tag}: {dt:.1f}s, {row['seconds_per_point']:.1f}s/point, "
                  f"MD {md}, 1-LPIPS {lp}", flush=True)
    by_method = {m: summarise([r for r in rows if r["method"] == m]) for m in methods}
    summary = dict(by_method[methods[0]])     # the first method's figures at the top level, as before
    summary.update({"checkpoint": models.name, "folder": os.path.abspath(args.folder), "notes": scorer.notes,
                    "dift_checkpoint": scorer.dift[3] if scorer.dift else None, "methods": list(methods),
                    "by_method": by_method})
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    write_html(rows, summary, os.path.join(args.out, "report.html"))
    return summary


def summarise(rows: list[dict]) -> dict:
    def mean(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(vals)), 4) if vals else None
    pts = sum(r["pairs"] for r in rows)
    return {"samples": len(rows), "pairs": pts, "mean_md": mean("md"), "mean_one_minus_lpips": mean("one_minus_lpips"),
            "seconds_per_point": round(sum(r["seconds"] for r in rows) / max(1, pts), 3),
            "seconds_per_edit": mean("seconds")}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def comparison_table(summary: dict) -> list[list[str]]:
    """One row per method: method, samples, pairs, mean MD (px), mean 1-LPIPS, s/edit, s/point."""
    out = [["method", "samples", "pairs", "mean MD (px)", "mean 1-LPIPS", "s/edit", "s/point"]]
    for m, s in summary["by_method"].items():
        out.append([METHODS[m], str(s["samples"]), str(s["pairs"]), _fmt(s["mean_md"], ".2f"),
                    _fmt(s["mean_one_minus_lpips"], ".4f"), _fmt(s["seconds_per_edit"], ".2f"),
                    _fmt(s["seconds_per_point"], ".2f")])
    return out


def markdown_table(summary: dict) -> str:
    t = comparison_table(summary)
    lines = ["| " + " | ".join(r) + " |" for r in t]
    return "\n".join(lines[:1] + ["|" + "---|" * len(t[0])] + lines[1:])


def write_html(rows, summary, path):
    e = html.escape
    methods = summary.get("methods") or ["attentiondrag"]
    cells = []
    for sample in dict.fromkeys(r["sample"] for r in rows):
        mine = {r["method"]: r for r in rows if r["sample"] == sample}
        r0 = mine[methods[0]]
        mask_caption = ("mask: AttentionDrag's edit mask, the dual-branch edits the sample's"
                        if len(methods) > 1 and "attentiondrag" in methods else "mask")
        imgs = "".join(f'<td><img src="{e(sample)}/{k}.png" width="192"><br>{e(c)}</td>'
                       for k, c in (("original", "original"), ("arrows", "arrows"), ("mask", mask_caption)))
        text = []
        for m in methods:
            r = mine[m]
            label = e(METHODS[m]) + ": " if len(methods) > 1 else ""
            text.append(f"{label}{r['seconds']:.1f} s, MD {_fmt(r['md'], '.1f')}, "
                        f"1-LPIPS {_fmt(r['one_minus_lpips'], '.3f')}")
            caption = e(METHODS[m]) if len(methods) > 1 else "result"
            imgs += f'<td><img src="{e(sample)}/{result_name(m)}.png" width="192"><br>{caption}</td>'
        cells.append(f"<tr><td>{e(sample)}<br>{e(r0['prompt'])}<br>{r0['pairs']} pair(s), {r0['size']}<br>"
                     f"{'<br>'.join(text)}</td>{imgs}</tr>")
    notes = "".join(f"<li>{e(n)}</li>" for n in summary.get("notes", []))
    per_method = set(summarise([])) if len(methods) > 1 else set()   # in the comparison table instead
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in summary.items()
                    if k not in {"notes", "by_method", "methods"} | per_method)
    compare = ""
    if len(methods) > 1:
        t = comparison_table(summary)
        compare = ("<h2>Methods, same samples, same metrics</h2><table border=1>"
                   + "<tr>" + "".join(f"<th>{e(c)}</th>" for c in t[0]) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t[1:])
                   + "</table>")
    title = " vs ".join(METHODS[m] for m in methods)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"<!doctype html><meta charset=utf-8><title>DragFusion evaluation</title>"
                f"<h1>DragFusion: {e(title)} evaluation</h1>{compare}<table border=1>{table}</table><ul>{notes}</ul>"
                f"<table border=1>{''.join(cells)}</table>")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a DragBench- or Drag100-format folder (searched recursively)")
    ap.add_argument("--ckpt", default=None, help="SD1.5-family checkpoint in models/checkpoints (default: best present)")
    ap.add_argument("--dift-ckpt", default=None, help="SD-2.1 checkpoint for MD (default: one whose name says 2-1)")
    ap.add_argument("--subset", type=int, default=0, help="evaluate only N samples spread over the folder")
    ap.add_argument("--size", default="fit 512 (multiple of 8)", help="sample size (see Load DragBench Sample)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--edit-step", type=int, default=5)
    ap.add_argument("--tau", type=float, default=2.0)
    ap.add_argument("--methods", default="attentiondrag",
                    help="comma-separated edits to run on the same samples: attentiondrag (default), dual-branch "
                         "(VersaFusion: PNI Invert + Dual-Branch Guided Sampler, task drag, euler, the node's defaults); "
                         "e.g. attentiondrag,dual-branch for a side-by-side table")
    ap.add_argument("--dual-steps", type=int, default=20, help="dual-branch: PNI Invert's DDIM steps")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "evaluate"))
    args = ap.parse_args(argv)
    args.methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        ap.error(f"--methods: {', '.join(bad) or 'none given'}; choose from {', '.join(METHODS)}")
    if args.ckpt is None:
        ep.harness.load_host()
        import folder_paths
        sys.path.insert(0, os.path.join(REPO, "scripts"))
        from demo import pick_checkpoint
        args.ckpt, why = pick_checkpoint(folder_paths.get_filename_list("checkpoints"),
                                         folder_paths.get_folder_paths("checkpoints"))
        if args.ckpt is None:
            raise SystemExit("no checkpoint in models/checkpoints: run scripts/setup")
        print(f"[evaluate] checkpoint: {args.ckpt} ({why})")
    summary = evaluate(args)
    print(json.dumps(summary, indent=1))
    if len(args.methods) > 1:
        print(markdown_table(summary))
    print(os.path.join(os.path.abspath(args.out), "report.html"))
    return summary


if __name__ == "__main__":
    main()
