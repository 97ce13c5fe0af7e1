"""Pure torch: inversion math, PNI, movement fields, masks, interpolation, energies.

Nothing here imports ComfyUI; everything is testable with plain tensors.
"""
