"""FSS-1000 adapter: one folder per class holding <n>.jpg images and <n>.png masks (binarised at >= 128).

Expected layout (`root` is the folder that holds the 1000 class folders, e.g. HSNet's `FSS-1000/`):

    <root>/<class folder>/<n>.jpg
    <root>/<class folder>/<n>.png

Class ids come from eval.folds.fss_classes() (sorted trn, then sorted val, then sorted test; id = position + 1).
Splits are class-level: "trn", "val", "test" hold the images of that split's classes; "train" holds every image.
The trn/val lists are HSNet's files in eval/splits/fss/ (trainval "lists", the default) or, with trainval
"derived", a seeded 520/240 split of the 760 class folders on disk that are not in the shipped test list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import track

from maskforge.eval import folds
from maskforge.eval.datasets.base import DatasetError, ImageRecord, SegDataset
from maskforge.eval.datasets.decode import check_same_size, image_size, read_gray, read_rgb
from maskforge.storage.labels import LABEL_DTYPE

_CLASS_SPLITS = ("trn", "val", "test")
_THRESHOLD = 128


def _scan_class_folder(folder: Path) -> list[str]:
    """Return the sorted image numbers of a class folder, checking every <n>.jpg has its <n>.png and back."""
    jpgs: set[str] = set()
    pngs: set[str] = set()
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # OS metadata such as .DS_Store carries no data
        if path.suffix == ".jpg" and path.stem.isdigit():
            jpgs.add(path.stem)
        elif path.suffix == ".png" and path.stem.isdigit():
            pngs.add(path.stem)
        else:
            raise DatasetError(f"fss: unexpected file {path}; expected only <n>.jpg images and <n>.png masks")
    if jpgs - pngs:
        n = min(jpgs - pngs, key=int)
        raise DatasetError(f"fss: image {folder / (n + '.jpg')} has no mask; expected {folder / (n + '.png')}")
    if pngs - jpgs:
        n = min(pngs - jpgs, key=int)
        raise DatasetError(f"fss: mask {folder / (n + '.png')} has no image; expected {folder / (n + '.jpg')}")
    if not jpgs:
        raise DatasetError(f"fss: class folder {folder} is empty; expected <n>.jpg images with <n>.png masks")
    return sorted(jpgs, key=int)


class FssDataset(SegDataset):
    """FSS-1000 (1000 classes x 10 images) with HSNet's class-level splits trn / val / test, plus "train" = all."""

    name = "fss"

    def __init__(self, root: str | Path, trainval: str | None = None) -> None:
        self.root = Path(root)
        try:
            #: Provenance of the trn/val lists: "lists" (HSNet's files) or "derived:<seed>".
            self.trainval_source = folds.fss_trainval_source(trainval)
        except folds.FoldError as err:
            raise DatasetError(str(err)) from err
        if not self.root.is_dir():
            raise DatasetError(f"fss: dataset root {self.root} does not exist; expected the folder of class folders")
        on_disk = {p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        try:
            if self.trainval_source != "lists":
                self._check_derivable(on_disk)
            split_names = folds.fss_splits(trainval, on_disk)
            names = folds.fss_classes(trainval, on_disk)
        except folds.FoldError as err:
            raise DatasetError(f"fss: cannot build the class table: {err}") from err
        self._classes = {i + 1: name for i, name in enumerate(names)}
        self._cid = {name: cid for cid, name in self._classes.items()}
        unknown = sorted(on_disk - set(names))
        if unknown:
            raise DatasetError(
                f"fss: unknown class folder(s) {unknown[:5]} in {self.root}; expected only FSS-1000 class folders "
                "(eval/splits/fss/{trn,val,test}.txt)"
            )
        absent = [n for n in names if n not in on_disk]
        if absent:
            raise DatasetError(
                f"fss: missing class folder {self.root / absent[0]} ({len(absent)} of {len(names)} missing); "
                "expected one folder per FSS-1000 class"
            )
        self._numbers = {name: _scan_class_folder(self.root / name) for name in names}
        self._splits = {s: sorted(f"{c}/{n}" for c in split_names[s] for n in self._numbers[c]) for s in _CLASS_SPLITS}
        self._splits["train"] = sorted(i for s in _CLASS_SPLITS for i in self._splits[s])
        self._index: dict[str, dict[int, list[str]]] = {}

    def _check_derivable(self, on_disk: set[str]) -> None:
        """Refuse to derive trn/val unless the root holds exactly 1000 class folders, all 240 test classes included."""
        total = sum(folds.FSS_SPLIT_SIZES.values())
        test = folds.fss_split_names("test")
        n_test = len(on_disk & set(test))
        if len(on_disk) != total or n_test != len(test):
            raise DatasetError(
                f"fss: dataset.fss_trainval: derived needs exactly {total} class folders in {self.root}, all "
                f"{len(test)} test classes (eval/splits/fss/test.txt) among them; found {len(on_disk)} class folders, "
                f"{n_test} of them test classes"
            )

    def classes(self) -> dict[int, str]:
        """Return {id: class-folder name} for the 1000 classes (ids as in eval.folds.fss_classes())."""
        return dict(self._classes)

    def splits(self) -> tuple[str, ...]:
        """Return ("trn", "val", "test", "train"); the first three are class-level, "train" is every image."""
        return (*_CLASS_SPLITS, "train")

    def image_ids(self, split: str) -> list[str]:
        """Return sorted ids "<class folder>/<n>" of a split."""
        if split not in self._splits:
            raise DatasetError(f"fss: unknown split {split!r}; expected one of {self.splits()}")
        return list(self._splits[split])

    def _paths(self, image_id: str) -> tuple[int, Path, Path]:
        cname, _, number = image_id.rpartition("/")
        if cname not in self._cid or number not in self._numbers[cname]:
            raise DatasetError(f"fss: unknown image id {image_id!r}; expected '<class folder>/<n>' of an existing pair")
        folder = self.root / cname
        return self._cid[cname], folder / f"{number}.jpg", folder / f"{number}.png"

    def load(self, image_id: str) -> ImageRecord:
        """Decode the image and binarise its mask at >= 128 into the folder's class id (else background)."""
        cid, image_path, mask_path = self._paths(image_id)
        image = read_rgb(image_path, self.name)
        grey = read_gray(mask_path, self.name)
        check_same_size(self.name, image_path, image.shape[:2], mask_path, grey.shape)
        label = np.where(grey >= _THRESHOLD, cid, 0).astype(LABEL_DTYPE)
        return ImageRecord(image_id, image, label, (cid,) if (grey >= _THRESHOLD).any() else ())

    def class_index(self, split: str) -> dict[int, list[str]]:
        """Return {class id: image ids whose mask has a foreground pixel}, reading each mask once (cached)."""
        if split == "train" and split not in self._index:
            # Every class belongs to exactly one class-level split, so "train" is their union.
            parts = [self.class_index(s) for s in _CLASS_SPLITS]
            self._index[split] = {cid: sorted(i for p in parts for i in p[cid]) for cid in self._classes}
        if split not in self._index:
            index: dict[int, list[str]] = {cid: [] for cid in self._classes}
            for image_id in track(self.image_ids(split), description=f"fss {split}: indexing masks"):
                cid, image_path, mask_path = self._paths(image_id)
                grey = read_gray(mask_path, self.name)
                check_same_size(self.name, image_path, image_size(image_path, self.name), mask_path, grey.shape)
                if (grey >= _THRESHOLD).any():
                    index[cid].append(image_id)
            self._index[split] = index
        return self._index[split]
