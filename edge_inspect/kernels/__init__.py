"""Fused GPU preprocessing kernels (Triton) and their plain-torch reference."""
