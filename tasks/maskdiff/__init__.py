"""MaskDiff stages: TFA detector and mask-diffusion head, base and K-shot fine-tuning, COCO AP evaluation."""
