"""What the settings sweeps share (ad_sweep.py, db_sweep.py): run every variant on the same ShapeDrag-GT
samples and print one table per task."""
from __future__ import annotations

import time

from shapedrag import task_eval, task_metrics, tasks


def parse_args(doc: str, tasks_default: str, variants_default: str, variants_help: str, argv=None):
    """The sweeps' command line: --n, --seed, --tasks, --variants, --ckpt, --json. Returns (args, variant
    names, task list) after making sure the ShapeDrag checkpoint is in the host."""
    import argparse

    from shapedrag import evaluate
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="samples per task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", default=tasks_default)
    ap.add_argument("--variants", default=variants_default, help=variants_help)
    ap.add_argument("--ckpt", default=evaluate.CKPT)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    evaluate.ensure_checkpoint()
    return a, split(a.variants, ";"), split(a.tasks, ",")


def split(text: str, sep: str) -> list:
    """'a; b;' -> ['a', 'b']."""
    return [v.strip() for v in text.split(sep) if v.strip()]


def run_variants(task_list, n: int, seed: int, names, edit) -> dict:
    """{task: {variant: [score rows]}}: ``edit(sample, variant) -> (image, extra metrics dict)`` on each of the
    ``n`` samples of every task, each scored against its ground truth (seconds included)."""
    import torch
    rows = {t: {v: [] for v in names} for t in task_list}
    t0 = time.time()
    for t in task_list:
        for i in range(n):
            s = tasks.make_task(t, seed, i)
            for name in names:
                t1 = time.perf_counter()
                with torch.inference_mode():
                    img, extra = edit(s, name)
                rows[t][name].append({**task_metrics.task_score(img, s, time.perf_counter() - t1), **extra})
            print(f"[sweep {time.time() - t0:5.0f} s] {t} {i + 1}/{n}", flush=True)
    return rows


def print_tables(summary: dict, task_list, names, metrics, best_first: bool = False):
    """One Markdown table per task: a row per variant (best first by the task's defining metric, if asked)."""
    for t in task_list:
        key, higher = task_metrics.DEFINING[t]
        print(f"### {t} (defining: {key}, {'higher' if higher else 'lower'} is better)\n")
        print("| variant | " + " | ".join(metrics) + " |")
        print("|---|" + "---|" * len(metrics))
        order = names
        if best_first:
            order = sorted(names, key=lambda v: (-1 if higher else 1) * summary[t][v].get(key, float("nan")))
        for v in order:
            print(f"| {v} | " + " | ".join(task_eval._fmt(summary[t][v].get(k), k) for k in metrics) + " |")
        print()
