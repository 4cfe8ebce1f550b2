"""HSNet few-shot segmenter (Min et al., ICCV 2021): frozen backbone, 4D hypercorrelation, center-pivot squeeze."""
