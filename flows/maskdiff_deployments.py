"""Deployment entry points of MaskDiff on TFA's COCO split (no fold axis): train, evaluate, and the 10-draw study."""

from __future__ import annotations

from prefect import flow

from maskforge.flows.maskdiff import eval_maskdiff, maskdiff_draws, train_eval_maskdiff, train_maskdiff
from maskforge.tasks.maskdiff.aggregate import parse_data_seeds
from maskforge.tasks.maskdiff.config import VOC_SPLIT, load_maskdiff_config


def _tfa_overrides(root: str | None, voc_root: str | None = None, **more) -> dict:
    """Return dotted-key overrides of a split-tfa config file (None leaves the file's value); a voc_root switches
    evaluation to COCO -> VOC (eval.split voc2012-val)."""
    out = {k: v for k, v in more.items() if v is not None}
    if root is not None:
        out["dataset.root"] = root
    if voc_root is not None:
        out.update({"eval.split": VOC_SPLIT, "eval.voc_root": voc_root})
    return out


@flow(name="train-maskdiff-tfa", log_prints=True)
def train_maskdiff_tfa(
    config_path: str,
    root: str | None = None,
    shots: int | None = None,
    data_seed: int | None = None,
    synthetic_runs: list[str] | None = None,
    evaluate: bool = True,
) -> dict:
    """Train MaskDiff's base and K-shot stages on TFA's split (K, data seed), then (evaluate) score it on minival."""
    more = {
        "finetune.shots": shots,
        "finetune.data_seed": data_seed,
        "finetune.synthetic_runs": list(synthetic_runs) if synthetic_runs else None,
    }
    config = load_maskdiff_config(config_path, _tfa_overrides(root, **more))
    return train_eval_maskdiff(config=config) if evaluate else train_maskdiff(config=config)


@flow(name="eval-maskdiff-tfa", log_prints=True)
def eval_maskdiff_tfa(
    config_path: str,
    root: str | None = None,
    shots: int | None = None,
    data_seed: int | None = None,
    voc_root: str | None = None,
) -> dict:
    """Evaluate one K-shot stage on TFA's split: minival, or VOC2012 val (COCO -> VOC) when voc_root is given."""
    more = {"finetune.shots": shots, "finetune.data_seed": data_seed}
    return eval_maskdiff(config=load_maskdiff_config(config_path, _tfa_overrides(root, voc_root, **more)))


@flow(name="maskdiff-tfa-draws", log_prints=True)
def maskdiff_tfa_draws(
    config_path: str,
    root: str | None = None,
    shots: int | None = None,
    data_seeds: str = "0-9",
    retries: int = 1,
    voc_root: str | None = None,
) -> dict:
    """The paper's table entry: K-shot stages of data seeds `data_seeds` (e.g. "0-9"), each sampled
    eval.sampling_seeds times, aggregated (mean ± std over draws and over samplings)."""
    config = load_maskdiff_config(config_path, _tfa_overrides(root, voc_root, **{"finetune.shots": shots}))
    return maskdiff_draws(config=config, data_seeds=parse_data_seeds(data_seeds), retries=retries)
