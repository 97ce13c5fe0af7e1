"""The host the pack is tested in starts complete: every ComfyUI node module and the pack import."""
import harness


def test_server_log_has_no_import_failure(server):
    server.get("/object_info/DragFusionPointsJSON")  # the server is up and has loaded everything
    log = open(server.log_path, encoding="utf-8", errors="replace").read()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line]
    assert not failed, "\n".join(failed) + "\n" + server.log_tail()
    assert "torchaudio" not in log, server.log_tail()  # 0.3.75's audio/image nodes need it


def test_pack_nodes_served(server):
    info = server.get("/object_info")
    ours = [k for k in info if k.startswith(harness.PACK_PREFIX)]
    assert len(ours) >= 15, ours
