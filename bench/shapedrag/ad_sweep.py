"""AttentionDrag settings measured on ShapeDrag-GT: which defaults edit.

    .venv/bin/python bench/shapedrag/ad_sweep.py [--n 4] [--seed 0] [--tasks drag,drag_multi,drag_two,inpaint]
        [--variants "paper + KV;rigid;..."] [--json FILE]

Every variant is the whole AttentionDrag pipeline through the pack's nodes (Inversion with Attention Capture,
AutoMask, Semantic Move, Attention Interpolate, KV Consistency, KSamplerAdvanced), one setting changed from
the base; each is scored against the rendered ground truth (task_metrics.task_score) and the table gives per
task the defining metric (MD for the drags, PSNR inside the region for inpaint) with IoU, PSNR outside the
region, lost and duplicated objects, and the share of samples where the pipeline stopped with an error (an
empty automatic mask: the user gets no edit, scored as the unedited source). The inpaint task uses only the capture, interpolation (mode 'inpaint') and
KV settings of a variant.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for p in (os.path.join(REPO, "tests"), os.path.join(REPO, "bench"), os.path.join(REPO, "scripts")):
    if p not in sys.path:
        sys.path.insert(0, p)

import harness  # noqa: E402
from shapedrag import scenes, sweeps, task_eval, task_metrics, tasks  # noqa: E402

# the paper's settings (AttentionDrag Sec. 4.1 / Eq. 6, 12) as the nodes expose them
PAPER = dict(layers="latent resolution", automask="alone", reference="handle", tau=2.0,
             movement="attention ratio (Eq. 6)", fill="attention", scheduler="simple")
# the base every variant changes: the paper's settings plus what the paper does not have. KV consistency during
# regeneration is not in AttentionDrag (it follows DragDiffusion / FastDrag); on the capture layers ("same as
# layers") is this pack's choice, as is the int8 capture.
BASE = dict(PAPER, kv=True, kv_layers="same as layers", precision="int8 per channel")
VARIANTS = {
    "paper + KV": {},
    "paper (no KV consistency)": dict(kv=False),
    "automask mean": dict(reference="mean"),
    "automask mean + user mask": dict(reference="mean", automask="union"),
    "user mask only": dict(automask="user"),
    "rigid": dict(movement="rigid"),
    "rigid + user mask": dict(movement="rigid", automask="union", reference="mean"),
    "rigid + user, KV decoder": dict(movement="rigid", automask="union", reference="mean",
                                     kv_layers="decoder, two finest levels"),
    "rigid + user, KV off": dict(movement="rigid", automask="union", reference="mean", kv=False),
    "rigid + user, layers decoder": dict(movement="rigid", automask="union", reference="mean",
                                         layers="decoder at latent resolution"),
    "rigid + user, tau 4": dict(movement="rigid", automask="union", reference="mean", tau=4.0),
    "rigid + user, tau 4, fp16 capture": dict(movement="rigid", automask="union", reference="mean", tau=4.0,
                                              precision="fp16"),
    "rigid, automask mean tau 4 alone": dict(movement="rigid", reference="mean", tau=4.0),
    "rigid, automask mean tau 2 alone": dict(movement="rigid", reference="mean"),
    "rigid + user, normal": dict(movement="rigid", automask="union", reference="mean", scheduler="normal"),
    "rigid + user, ddim_uniform": dict(movement="rigid", automask="union", reference="mean", scheduler="ddim_uniform"),
}
DRAG_TASKS = ("drag", "drag_multi", "drag_two")


class Sweep(task_eval.TaskEvaluator):
    def edit(self, s: tasks.TaskSample, v: dict) -> np.ndarray:
        run = harness.run_node
        pos, neg = self.cond(scenes.PROMPT)
        mask = task_eval._t(s.instruction["mask"].astype(np.float32))[0][None]
        pts = self.points(s) if "points" in s.instruction else None
        self.scheduler = v["scheduler"]
        z, cap = run("DragFusionInvertCapture", model=self.model, latent=self.encode(s.source), steps=self.steps,
                     edit_step=self.edit_step, scheduler=v["scheduler"], cfg=1.0, layers=v["layers"],
                     capture_values=v["kv"], kv_layers=v["kv_layers"], capture_precision=v["precision"],
                     positive=pos).result
        return self.attentiondrag(z, cap, pts, mask, pos, neg, inpaint=s.task == "inpaint", automask=v["automask"],
                                  tau=v["tau"], reference=v["reference"], movement=v["movement"], fill=v["fill"],
                                  kv=v["kv"])


def main(argv=None):
    a, names, task_list = sweeps.parse_args(__doc__, "drag,drag_multi,drag_two,inpaint", ";".join(VARIANTS),
                                            "variant names separated by ;", argv)
    ev = Sweep(ckpt=a.ckpt)

    def edit(s, name):
        try:
            return ev.edit(s, {**BASE, **VARIANTS[name]}), {"failed": 0.0}
        except ValueError as e:          # e.g. an empty automatic mask: the user gets an error, no edit
            if "is empty" not in str(e):
                raise
            return s.source, {"failed": 1.0}

    rows = sweeps.run_variants(task_list, a.n, a.seed, names, edit)
    summary = {t: {v: {**task_metrics.summarize(r), "failed": float(np.mean([x["failed"] for x in r]))}
                   for v, r in vs.items()} for t, vs in rows.items()}
    print(f"\nAttentionDrag variants on ShapeDrag-GT (n = {a.n} per task, seed {a.seed}; base = the paper's settings "
          f"{PAPER} + the pack's KV consistency {dict((k, BASE[k]) for k in BASE if k not in PAPER)})\n")
    sweeps.print_tables(summary, task_list, names, ("md", "iou", "psnr_in", "psnr_out", "lost", "duplicated", "failed"),
                        best_first=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(n=a.n, seed=a.seed, paper=PAPER, base=BASE, variants={k: VARIANTS[k] for k in names}, summary=summary),
                      f, indent=1, default=float)
    return summary


if __name__ == "__main__":
    main()
