"""MaskDiff: a TFA few-shot detector with a class-conditional diffusion mask head (DDPM over box-crop masks)."""
