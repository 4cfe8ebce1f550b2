"""Config sections of the datasets: which dataset and fold to read, and the procedural toy world."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from maskforge.storage.yaml_config import PathText, Seed, StrictConfig


class ToyConfig(StrictConfig):
    """The procedural toy world (the embedded default dataset)."""

    seed: Seed = Field(0, description="World seed: the same seed renders the same images.")
    image_size: int = Field(96, ge=32, le=1024, description="Square image side in pixels.")
    n_train: int = Field(400, ge=8, le=100_000, description="Images in the train split.")
    n_val: int = Field(100, ge=4, le=100_000, description="Images in the val split.")
    variety: int = Field(
        1,
        ge=1,
        le=3,
        description="Looks per class: 1 (one shape in one material, the default world) or 2-3 (each object also "
        "draws an extra shape in an extra colour; eval/datasets/toy_variety.py).",
    )

    @model_serializer(mode="wrap")
    def _drop_default_variety(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump without variety while it is 1, so the dumps and hashes of every existing config stay the same."""
        data = handler(self)
        if self.variety == 1:
            data.pop("variety", None)
        return data


class DatasetConfig(StrictConfig):
    """Which dataset and fold to read."""

    name: Literal["toy", "pascal", "coco", "fss"] = "toy"
    root: PathText | None = Field(None, description="Dataset root on disk; required for pascal, coco and fss.")
    fold: int = Field(0, ge=0, le=3, description="Fold index: PASCAL-5i, COCO-20i and toy have 0-3; FSS-1000 has 0.")
    coco_fold_mode: Literal["interleaved", "contiguous"] = Field(
        "interleaved", description="COCO-20i fold tables: interleaved (HSNet, default) or contiguous (PANet-style)."
    )
    toy: ToyConfig = ToyConfig()
    coco_layout: Literal["instances2014", "instances2017", "stuffthingmaps2017"] | None = Field(
        None,
        description="COCO only: instances2014 (the default: HSNet's COCO-20i, val2014), instances2017 (COCO2017 "
        "instances painted the same way, val2017) or stuffthingmaps2017 (COCO2017 with COCO-Stuff thing maps: GAPS).",
    )
    fss_trainval: Literal["lists", "derived"] | None = Field(
        None,
        description="FSS-1000 trn/val class lists: lists (HSNet's trn.txt/val.txt in eval/splits/fss/, the default) or "
        "derived (a seeded 520/240 split of the 760 non-test class folders on disk). FSS-1000 only.",
    )

    @model_serializer(mode="wrap")
    def _drop_unset_trainval(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Dump without fss_trainval or coco_layout while None, so the dumps and hashes of configs without them stay
        the same."""
        data = handler(self)
        for key in ("fss_trainval", "coco_layout"):
            if getattr(self, key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _root_and_fold(self) -> "DatasetConfig":
        if self.name != "toy" and not self.root:
            raise ValueError(f"dataset.root is required for dataset {self.name!r} (a directory on disk)")
        if self.name == "toy" and self.root:
            raise ValueError("dataset.root must be empty for the toy dataset (it is rendered in-process)")
        if self.name != "fss" and self.fss_trainval is not None:
            raise ValueError(
                f"dataset.fss_trainval applies to FSS-1000 only (dataset.name: fss); remove it for {self.name!r}"
            )
        if self.name != "coco" and self.coco_layout is not None:
            raise ValueError(
                f"dataset.coco_layout applies to COCO only (dataset.name: coco); remove it for {self.name!r}"
            )
        if self.name == "fss" and self.fold != 0:
            raise ValueError(f"FSS-1000 has one fold (0: the 240 test classes are novel); got fold {self.fold}")
        return self

    def mismatch(self, other: dict[str, Any] | None, fold: bool = False, world: bool = False) -> str | None:
        """Return what makes a run's stored dataset section `other` another dataset than this one, else None.

        Class ids are the dataset's: a run of another dataset means other classes under the same ids. With `fold`,
        the fold must match too (the run's classes are its fold's novel classes); with `world`, a toy run must
        render the same toy world (seed and image size; the class ids mean the same shapes in every world).
        """
        other = other or {}
        if other.get("name") != self.name:
            return f"is a run of dataset {other.get('name')!r}; expected a run of {self.name!r}"
        if fold and other.get("fold") != self.fold:
            return f"is a run of {self.name} fold {other.get('fold')}; this config reads {self.name} fold {self.fold}"
        if world and self.name == "toy":
            theirs = other.get("toy") or {}
            ours = {"seed": self.toy.seed, "image_size": self.toy.image_size}
            if {k: theirs.get(k) for k in ours} != ours or theirs.get("variety", 1) != self.toy.variety:
                return (
                    f"renders another toy world (seed {theirs.get('seed')}, image_size {theirs.get('image_size')}, "
                    f"variety {theirs.get('variety', 1)}); this config has seed {self.toy.seed}, image_size "
                    f"{self.toy.image_size}, variety {self.toy.variety} (all must match)"
                )
        return None
