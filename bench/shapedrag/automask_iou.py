"""AutoMask alone against the ground-truth object masks of ShapeDrag-GT (AttentionDrag Eq. 11-12).

    .venv/bin/python bench/shapedrag/automask_iou.py [--n 4] [--seed 0] [--tasks drag,drag_multi,drag_two]
        [--layers "latent resolution,decoder at latent resolution,custom:input.1.0"] [--json FILE]

For every drag sample of tasks.py: the source is inverted by Inversion with Attention Capture (10 steps of
'simple', edit step 5, as the pack's defaults on the ShapeDrag model), and AttentionDrag AutoMask runs with
NO user mask, for every combination of reference ('handle' = the paper's literal Eq. 12, 'mean'), tau,
capture layers, averaged steps ('all' or the last one) and dilation. Each automatic mask (8x8-pixel latent
cells) is scored by its IoU with the union of the dragged objects' ground-truth masks in the source, and by
how often it is empty. The user mask of the sample (the objects' box, dilated) is scored the same way as a
reference row. Prints a Markdown table sorted by mean IoU; --json writes the rows.
"""
from __future__ import annotations

import argparse
import itertools
import json
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
from shapedrag import evaluate, scenes, task_eval, tasks  # noqa: E402


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def object_mask(s: tasks.TaskSample) -> np.ndarray:
    """Union of the dragged objects' masks in the source (the scorer's segmentation)."""
    m = np.zeros(s.source.shape[:2], bool)
    for e in s.objects:
        if e["moved"] and e["src"] is not None:
            m |= e["src"]
    return m


def parse_layers(text: str) -> list:
    out = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("custom:"):
            out.append(("custom", part[len("custom:"):].replace("+", ",")))
        elif part:
            out.append((part, ""))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="samples per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default="drag,drag_multi,drag_two")
    ap.add_argument("--layers", default="latent resolution,decoder at latent resolution,custom:input.1.0")
    ap.add_argument("--taus", default="1.5,2,4,8")
    ap.add_argument("--ckpt", default=evaluate.CKPT)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    ev = task_eval.TaskEvaluator(ckpt=a.ckpt)
    run = harness.run_node
    taus = [float(t) for t in a.taus.split(",")]
    layer_sets = parse_layers(a.layers)
    scores = {}          # variant -> [iou]
    empty = {}
    user = []
    t0 = time.time()
    samples = [tasks.make_task(t, a.seed, i) for t in a.tasks.split(",") for i in range(a.n)]
    for si, s in enumerate(samples):
        gt = object_mask(s)
        user.append(iou(s.instruction["mask"] > 0.5, gt))
        pos, _ = ev.cond(scenes.PROMPT)
        pts = ev.points(s)
        latent = ev.encode(s.source)
        for preset, custom in layer_sets:
            z, cap = run("DragFusionInvertCapture", model=ev.model, latent=latent, steps=ev.steps, edit_step=ev.edit_step,
                         scheduler=ev.scheduler, cfg=1.0, layers=preset, custom_layers=custom, positive=pos).result
            for reference, tau, steps, dil in itertools.product(("handle", "mean"), taus, ("all", str(cap.steps[-1])), (0, 1)):
                m = run("DragFusionAutoMask", capture=cap, points=pts, tau=tau, reference=reference, steps=steps,
                        dilation=dil).result[0][0].cpu().numpy() > 0.5
                key = (reference, tau, f"{preset}{':' + custom if custom else ''}", "all" if steps == "all" else "last", dil)
                scores.setdefault(key, []).append(iou(m, gt))
                empty.setdefault(key, []).append(not m.any())
        print(f"[automask {time.time() - t0:5.0f} s] {si + 1}/{len(samples)} {s.task} #{s.index}", flush=True)
    rows = sorted(({"reference": k[0], "tau": k[1], "layers": k[2], "steps": k[3], "dilation": k[4],
                    "iou": float(np.mean(v)), "iou_min": float(np.min(v)), "empty": float(np.mean(empty[k]))}
                   for k, v in scores.items()), key=lambda r: -r["iou"])
    print(f"\nAutoMask alone vs the ground-truth object masks: {len(samples)} samples ({a.tasks}, seed {a.seed})\n")
    print("| reference | tau | layers | steps | dilation | IoU mean | IoU min | empty |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['reference']} | {r['tau']:g} | {r['layers']} | {r['steps']} | {r['dilation']} | {r['iou']:.3f} | "
              f"{r['iou_min']:.3f} | {r['empty']:.0%} |")
    print(f"| (user mask of the samples) | | | | | {np.mean(user):.3f} | {np.min(user):.3f} | 0% |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "user_mask_iou": float(np.mean(user)), "n": len(samples), "seed": a.seed}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
