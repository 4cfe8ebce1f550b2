"""Copy-paste of synthetic objects: objects cut from a class's diffusion samples are pasted onto base images."""

import pytest
from tiny import diffusion_section

from maskforge.flows.generate import generate
from maskforge.storage.reader import RunReader
from maskforge.storage.yaml_config import ConfigError
from maskforge.tasks.class_samples import object_pool
from maskforge.tasks.config import parse_config
from maskforge.tasks.fold_plan import ClassPlan


def test_synthetic_source_needs_diffusion_and_samples():
    with pytest.raises(ConfigError, match="'synthetic' needs a 'diffusion' section"):
        parse_config({"generation": {"sources": ["real", "synthetic"]}})
    with pytest.raises(ValueError, match="class 'red disc' has no diffusion sample to cut objects from"):
        object_pool(None, ClassPlan(1, "red disc", ("a",)), "synthetic", [])


@pytest.mark.prefect
def test_flow_pastes_synthetic_objects(tmp_path, tiny_models, prefect_harness):
    config = parse_config(
        {
            "run": {"name": "syn", "out_dir": str(tmp_path / "runs")},
            "dataset": {"toy": {"image_size": 64, "n_train": 60, "n_val": 8}},
            "base": {"subset_size": 10},
            "generation": {"samples_per_class": 3, "sources": ["real", "synthetic"], "classes": ["red disc"]},
            "diffusion": diffusion_section(tiny_models, controlnet={"conditions": ["mask"]}),
        }
    ).resolved()
    reader = RunReader(generate(config=config)["url"])
    assert reader.summary["samples_per_class"]["red disc"] == {"real": 3, "synthetic": 3, "text": 2, "cn-mask": 1}
    generated = {s.key: s for s in reader if s.meta["source"] in ("text", "cn-mask")}
    composed = [s for s in reader if s.meta["source"] == "synthetic"]
    assert [s.key for s in composed] == [f"toy-f0-c0001-synthetic-{i:05d}" for i in range(3)]
    for s in composed:
        assert (s.label == 1).any() and s.meta["mask_method"] in ("xattn", "support")
        assert s.meta["base_image_id"] and s.image.shape == (64, 64, 3)
        # every pasted object came from one of the class's generated samples (their shots)
        shots = {shot for g in generated.values() for shot in g.meta["shot_ids"]}
        assert all(set(o["shot_ids"]) <= shots for o in s.meta["objects"])
    # later objects may hide earlier ones, but every scene shows some synthetic object
    assert all(any(o["visible_pixels"] > 0 for o in s.meta["objects"]) for s in composed)
