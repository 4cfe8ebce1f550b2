"""`maskforge datasets check|coco-json`: validate a dataset layout on disk, export a split's instances as COCO JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskforge.eval.coco_export import write_coco_json
from maskforge.eval.datasets import build_dataset
from maskforge.eval.datasets.base import DatasetError
from maskforge.eval.datasets.check import check_layout, format_report
from maskforge.flows.cli_support import check_out_file, non_empty_path, non_empty_text
from maskforge.flows.console import console, fail

datasets_app = typer.Typer(help="Validate dataset layouts on disk.", no_args_is_help=True)


@datasets_app.command("check")
def datasets_check(
    root: str = typer.Argument(
        ..., help="Dataset root folder ('-' for the in-process toy dataset).", parser=non_empty_text
    ),
    dataset: str = typer.Option(..., "--dataset", help="pascal, coco, fss or toy."),
    coco_fold_mode: str = typer.Option("interleaved", help="COCO-20i folds: interleaved or contiguous."),
    sample: Optional[int] = typer.Option(
        None, "--sample", min=1, max=1_000_000, help="Decode only N images per split (default: every image)."
    ),
    fss_trainval: Optional[str] = typer.Option(
        None,
        "--fss-trainval",
        help="FSS-1000 trn/val classes: lists (HSNet's files) or derived (dataset.fss_trainval).",
    ),
    coco_layout: Optional[str] = typer.Option(
        None,
        "--coco-layout",
        help="COCO: instances2014 (default), instances2017 or stuffthingmaps2017 (dataset.coco_layout).",
    ),
) -> None:
    """Validate a dataset layout (every image and label decoded) and print image counts per class and per fold."""
    try:
        report = check_layout(
            dataset,
            None if root == "-" else root,
            coco_fold_mode,
            sample=sample,
            fss_trainval=fss_trainval,
            coco_layout=coco_layout,
        )
    except DatasetError as err:
        fail(str(err))
    console.print(format_report(report), soft_wrap=True, markup=False, highlight=False)
    if report.problems:
        raise typer.Exit(code=1)


@datasets_app.command("coco-json")
def datasets_coco_json(
    root: str = typer.Argument(
        ..., help="Dataset root folder ('-' for the in-process toy dataset).", parser=non_empty_text
    ),
    dataset: str = typer.Option(..., "--dataset", help="A dataset with instances: coco or toy."),
    out: Path = typer.Option(..., "--out", help="COCO-format JSON file to write.", parser=non_empty_path),
    split: str = typer.Option("val", "--split", help="Split to export."),
    limit: Optional[int] = typer.Option(
        None, "--limit", min=1, max=10_000_000, help="Export only the split's first N images (sorted ids)."
    ),
) -> None:
    """Export a split's instances to a COCO-format JSON (pycocotools RLE), readable by pycocotools' COCO/COCOeval."""
    check_out_file(out, (".json",))
    try:
        ds = build_dataset(dataset, None if root == "-" else root)
        ids = ds.image_ids(split)[:limit] if limit else None
        summary = write_coco_json(ds, split, str(out), ids)
    except DatasetError as err:
        fail(str(err))
    console.print(
        f"wrote {summary['path']}: {summary['images']} images, {summary['annotations']} annotations", soft_wrap=True
    )
    if hasattr(ds, "skipped"):
        skipped = ds.skipped(split)
        console.print("skipped annotations: " + ", ".join(f"{k} {v}" for k, v in skipped.items()))
