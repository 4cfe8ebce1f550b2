"""DiffewS: Stable Diffusion's UNet as a few-shot segmenter (KV-fusion self-attention, conv_in_ref, OI2M)."""
