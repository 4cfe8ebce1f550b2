"""Every learner stage checks where it will write before any work: a training stage its run.out_dir (unless the
stage is complete and reused), an evaluation its eval.results_dir."""

from pathlib import Path

import pytest

from maskforge.storage.fs import OutputLocationError
from maskforge.tasks.diffews.config import load_diffews_config
from maskforge.tasks.diffews.evaluate import eval_diffews
from maskforge.tasks.diffews.train import train_diffews
from maskforge.tasks.gfss.base import train_gfss_base
from maskforge.tasks.gfss.config import load_gfss_config
from maskforge.tasks.gfss.evaluate import eval_gfss
from maskforge.tasks.gfss.novel import train_gfss_novel
from maskforge.tasks.hsnet.config import load_hsnet_config
from maskforge.tasks.hsnet.eval import eval_hsnet
from maskforge.tasks.hsnet.train import train_hsnet
from maskforge.tasks.maskdiff.config import load_maskdiff_config
from maskforge.tasks.maskdiff.evaluate import eval_maskdiff
from maskforge.tasks.maskdiff.train import train_maskdiff_base, train_maskdiff_finetune

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADERS = {
    "hsnet": (load_hsnet_config, "hsnet-toy.yaml"),
    "gfss": (load_gfss_config, "gfss-toy.yaml"),
    "diffews": (load_diffews_config, "diffews-toy.yaml"),
    "maskdiff": (load_maskdiff_config, "maskdiff-toy.yaml"),
}
STAGES = [
    ("hsnet", train_hsnet, "run.out_dir"),
    ("hsnet", eval_hsnet, "eval.results_dir"),
    ("gfss", train_gfss_base, "run.out_dir"),
    ("gfss", train_gfss_novel, "run.out_dir"),
    ("gfss", eval_gfss, "eval.results_dir"),
    ("diffews", train_diffews, "run.out_dir"),
    ("diffews", eval_diffews, "eval.results_dir"),
    ("maskdiff", train_maskdiff_base, "run.out_dir"),
    ("maskdiff", train_maskdiff_finetune, "run.out_dir"),
    ("maskdiff", eval_maskdiff, "eval.results_dir"),
]


@pytest.mark.parametrize("learner, stage, field", STAGES, ids=[f"{s[0]}-{s[1].__name__}" for s in STAGES])
def test_a_stage_refuses_an_output_place_it_cannot_write_before_any_work(tmp_path, learner, stage, field):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    loader, name = LOADERS[learner]
    writable = str(tmp_path / "out")
    overrides = {"run.out_dir": writable, "eval.results_dir": writable, field: str(blocker / "below")}
    config = loader(CONFIGS / name, overrides)
    with pytest.raises(OutputLocationError, match=rf"^{field}: .*a-file is a file, so .*below cannot be created"):
        stage(config, log=lambda message: None)
    assert not (tmp_path / "out").exists()  # nothing was trained, evaluated or written
