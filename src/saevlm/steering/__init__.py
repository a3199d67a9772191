"""Steering LLaVA through SAE latents in its vision tower (arXiv 2504.02821, Sec. 4.3)."""
