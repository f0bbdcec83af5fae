"""zr_align."""
