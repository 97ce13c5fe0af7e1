"""The example workflows, written once as small specs (see scripts/workflows.py).

Each entry: file name -> (nodes, notes). Node: {"id", "type", "pos", "widgets", "links"}.
"""

SAMPLE = "dragfusion_data/dragbench-dev/animals/JH_2023-09-14-1820-16"

PREVIEW_DRAG_POINTS = [
    {"id": 1, "type": "DragFusionLoadDragBenchSample", "pos": [50, 100],
     "widgets": {"sample": SAMPLE, "size": "fit 512 (multiple of 8)"}},
    {"id": 2, "type": "DragFusionPreviewDragPoints", "pos": [450, 100],
     "links": {"image": [1, 0], "points": [1, 1], "mask": [1, 2]}},
    {"id": 3, "type": "SaveImage", "pos": [850, 100], "widgets": {"filename_prefix": "dragfusion_preview"},
     "links": {"images": [2, 0]}},
]

SPECS = {
    "preview_drag_points.json": (PREVIEW_DRAG_POINTS, [
        "DragFusion: load a DragBench sample (image, drag instruction, mask) and draw its numbered "
        "handle -> target arrows with the editable region tinted. The sample path is relative to "
        "ComfyUI's input folder; scripts/setup links the shared data there as dragfusion_data/."]),
}
