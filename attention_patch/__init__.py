"""Everything that touches the UNet's attention; installed only on ``model.clone()``."""
