"""What the episodic learners (HSNet and DiffewS: the HSNet protocol, tasks/episode_results.py) share in their
learner declarations (tasks/learner.py): the evaluation's options and deployment parameters, its log lines. Light: no
torch."""

from __future__ import annotations

from maskforge.tasks.learner import DATASET, FOLD, ROOT, Option, Param

#: The episodic evaluation flow's log lines (tasks/episode_results.py).
EPISODE_LOG = "maskforge.tasks.episode_results:episode_log"
#: The options and deployment parameters of an episodic evaluation (HSNet's, DiffewS's: the same four).
EVAL_OPTIONS = (
    Option("--shots", "eval.shots", int, "Real supports per episode (overrides eval.shots)."),
    Option(
        "--synthetic",
        "eval.synthetic_run",
        str,
        "A maskforge run of the novel classes: adds the KR+NS setting (eval.synthetic_run).",
    ),
    Option(
        "--per-class",
        "eval.synthetic_per_class",
        int,
        "N, generated supports added per episode (eval.synthetic_per_class).",
    ),
)
EVAL_PARAMS = (
    DATASET,
    FOLD,
    Param("shots", int | None, key="eval.shots"),
    ROOT,
    Param("checkpoint", str | None, key="eval.checkpoint"),
    Param("synthetic_run", str | None, key="eval.synthetic_run"),
    Param("synthetic_per_class", int | None, key="eval.synthetic_per_class"),
)
