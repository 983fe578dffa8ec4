"""The CogVideoX-Fun 5B InP family (V1.1 and V1.5) on diffusers: model assembly, checkpoint IO,
LoRA application, conditioning, sampler and decode. Spec: docs/checkpoint-format.md."""
