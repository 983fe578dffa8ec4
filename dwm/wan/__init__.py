"""The Wan 2.1 Fun InP family (the released DWM-Wan2.1-Fun-14b-LoRA) on diffusers and transformers:
VideoX-Fun base folders, release IO, LoRA, conditioning, sampler and decode."""
