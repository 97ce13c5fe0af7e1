"""Against the real server over HTTP: cancel mid-edit, determinism, and 50 queued edits (load)."""
import json
import time

import psutil

import harness
import robust_files as rf
import robust_graphs as rg


def latents(server, hist) -> list:
    from safetensors.torch import load
    return [load(rg.view(server, f))["latent_tensor"] for f in rg.output_files(hist, "latents")]


def cached(hist) -> set:
    """Node ids the server answered from its cache."""
    cached = set()
    for kind, msg in hist["status"]["messages"]:
        if kind == "execution_cached":
            cached |= set(msg.get("nodes", []))
    return cached


def ok(hist):
    assert hist["status"]["status_str"] == "success", json.dumps(harness.execution_error(hist))[:3000]
    return hist


def wait_running(server, prompt_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        q = server.get("/queue")
        if any(item[1] == prompt_id for item in q.get("queue_running", [])):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{prompt_id} never started")


def test_cancel_mid_edit_then_identical_run_is_bit_identical(server, data_dir):
    clean = ok(server.run(rg.edit_graph(variant=11, steps=4, edit_step=1, save_latent=True,
                                        prefix=rf.TAG + "cancel"), timeout=300))
    # A long edit (1000-step schedule, the inversion makes 1000 UNet calls), cancelled while it runs.
    long_g = rg.edit_graph(variant=12, steps=1000, edit_step=0, prefix=rf.TAG + "cancel_long")
    long_g["9"]["inputs"]["capture_steps"] = "0"
    long_g["17"]["inputs"]["start_at_step"] = 999
    r = server.queue(long_g)
    wait_running(server, r["prompt_id"])
    time.sleep(2.0)                                  # well inside the inversion
    server.post("/interrupt", {})
    hist = server.wait(r["prompt_id"], timeout=120)
    kinds = [k for k, _ in hist["status"]["messages"]]
    assert hist["status"]["status_str"] == "error" and "execution_interrupted" in kinds, kinds
    interrupted = next(m for k, m in hist["status"]["messages"] if k == "execution_interrupted")
    assert interrupted["node_type"].startswith("DragFusion") or interrupted["node_type"] == "KSamplerAdvanced", interrupted
    assert server.get("/system_stats")
    # The same edit as the clean one, spelled so the cache cannot answer: every pack node runs again.
    again = ok(server.run(rg.edit_graph(variant=13, steps=4, edit_step=1, save_latent=True,
                                        prefix=rf.TAG + "cancel"), timeout=300))
    assert not ({"9", "13", "14", "15", "16", "17"} & cached(again)), "the rerun was answered from the cache"
    (a,), (b,) = latents(server, clean), latents(server, again)
    assert a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all()), "latent differs after a cancel"
    (pa,), (pb,) = rg.pixels(server, clean), rg.pixels(server, again)
    assert (pa == pb).all()


def test_same_workflow_and_seed_twice_gives_identical_output(server, data_dir):
    def run(variant, seed):
        g = rg.edit_graph(variant=variant, steps=2, edit_step=1, save_latent=True, prefix=rf.TAG + "det")
        g["15"]["inputs"].update(fill="noise", seed=seed)      # the seeded fill: randomness that must repeat
        return ok(server.run(g, timeout=300))
    h1, h2, h3 = run(21, 1234), run(22, 1234), run(23, 999)
    (l1,), (l2,), (l3,) = latents(server, h1), latents(server, h2), latents(server, h3)
    assert bool((l1 == l2).all()), "same seed, different latent"
    assert (rg.pixels(server, h1)[0] == rg.pixels(server, h2)[0]).all()
    assert not bool((l1 == l3).all()), "the seed did not matter: the test would prove nothing"
    p1 = ok(server.run(rg.pni_graph(variant=24), timeout=300))
    p2 = ok(server.run(rg.pni_graph(variant=25), timeout=300))
    assert (rg.pixels(server, p1)[0] == rg.pixels(server, p2)[0]).all()


def test_fifty_queued_edits_no_failure_and_flat_memory(server, data_dir):
    proc = psutil.Process(server.proc.pid)
    cpu0 = sum(proc.cpu_times()[:2])
    ids = []
    for i in range(50):
        p = json.loads(json.dumps(rg.GOOD_POINTS))
        p["pairs"][0]["target"] = [36 + i * 0.1, 30]          # every edit runs from the points on
        g = rg.edit_graph(variant=31, steps=2, edit_step=1, points=p, prefix=rf.TAG + "load")
        r = server.queue(g)
        assert "prompt_id" in r, r
        ids.append(r["prompt_id"])
    t0 = time.time()
    hists = []
    rss = {}
    for n, pid in enumerate(ids, 1):
        hists.append(server.wait(pid, timeout=900))
        if n in (10, 50):
            rss[n] = proc.memory_info().rss
    failures = [harness.execution_error(h) for h in hists if h["status"]["status_str"] != "success"]
    assert not failures, json.dumps(failures[:2])[:3000]
    growth = rss[50] / rss[10] - 1
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    print(f"\nload: 50 edits in {time.time() - t0:.1f}s wall, {cpu:.1f}s server CPU; server RSS {rss[10] / 2**20:.0f} MiB after the 10th, "
          f"{rss[50] / 2**20:.0f} MiB after the 50th ({growth * 100:+.2f} %)")
    assert growth < 0.05, f"resident memory grew by {growth * 100:.1f} % between the 10th and the 50th edit"
