import harness


def test_every_pack_node_registered(host):
    ids = harness.pack_node_ids(host)
    for expected in ("DragFusionPointsJSON", "DragFusionLoadDragBenchSample", "DragFusionPreviewDragPoints"):
        assert expected in ids, ids
