"""Steering LLaVA through SAE latents in its vision tower (PAPER.md §5, Sec. 4.3)."""
