"""bench/_common.py's memory instrument: a run's peak above the resident floor (P1 and P4m's figure)."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
import _common  # noqa: E402

MB = 2**20
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU (RSS) instrument")


def spike(mb: int):
    """A short-lived allocation of ``mb`` MB, every page touched, freed before returning (a few ms)."""
    def run():
        t = torch.ones(mb * MB // 4)
        return float(t[:: 1024].sum())
    return run


def test_peak_above_counts_the_run_not_the_process():
    floor = _common.resident_bytes()
    mem = _common.peak_above(spike(64), floor)
    assert mem.floor == floor and mem.base == floor
    assert 62 * MB <= mem.delta_bytes <= 64 * MB + 48 * MB, mem.delta_bytes / MB
    assert mem.peak_bytes - mem.delta_bytes == floor           # absolute peak = floor + what the run needed
    small = _common.peak_above(spike(8), floor)
    assert small.delta_bytes < mem.delta_bytes - 40 * MB       # a smaller run reads smaller: a ratio means something


@pytest.mark.skipif(not _common._reset_hwm(), reason="no /proc/self/clear_refs (not Linux, or not allowed)")
def test_high_water_mark_catches_a_spike_between_samples():
    """A spike shorter than the 5 ms sampling interval still counts (VmHWM, reset at the start of the block)."""
    with _common.PeakMemory(interval=0.5) as mem:        # the thread samples once, at the start
        spike(64)()
    assert mem.hwm and mem.delta_bytes >= 62 * MB, mem.delta_bytes / MB


def test_row_names_the_memory_kind():
    floor = _common.resident_bytes()
    r = _common.row("P4m", "x", 2.0, 4.0, mem=_common.peak_above(spike(16), floor))
    assert r["mem_kind"] == "peak RSS above the resident floor" and r["peak_mem_mb"] >= 15
    with _common.PeakMemory() as m:
        pass
    assert _common.row("x", "x", 1.0, 1.0, mem=m)["mem_kind"] == "peak RSS delta"
