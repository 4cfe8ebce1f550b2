"""GFSS learners (FINETUNE and GAPS, AlignDiff Table 1): base stage, incremental novel stage, PIFS evaluation."""
