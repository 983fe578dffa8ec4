"""Headless DWM LoRA trainer: precompute latents, train with accelerate, validate, export for the nodes.

Stands on the engine in ``dwm/`` (model assembly, conditioning, sampler, checkpoint IO) so that what is
trained is exactly what the nodes run. See docs/training.md.
"""
