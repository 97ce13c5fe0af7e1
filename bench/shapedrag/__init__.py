"""ShapeDrag: a drag benchmark with known geometry (scenes, DragBench-format samples, scorer, evaluation)."""
