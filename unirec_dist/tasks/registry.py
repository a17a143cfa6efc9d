"""Task name -> (config dataclass, objective): the one place a task is registered.

`task.kind` in a training YAML picks one entry (or `multi`: several, weighted by `task.weights`);
`task.<name>` holds that task's config dataclass fields. Adding a task = one file in this package
(a `TaskConfig` dataclass and an `Objective`, see base.py) + one line here; a task defined
elsewhere calls `TASKS.register(name, TaskEntry(Config, Objective))`. Registration order is the
order in which tasks choose the checkpoint-ranking metric (the first active one's `monitor`).
"""
from __future__ import annotations

from unirec_dist.tasks.base import TaskEntry
from unirec_dist.tasks.ctr import CTRConfig, CTRObjective
from unirec_dist.tasks.rating import RatingConfig, RatingObjective
from unirec_dist.tasks.retrieval import RetrievalConfig, RetrievalObjective
from unirec_dist.utils.registry import Registry

TASKS: Registry[TaskEntry] = Registry("task", {
    "retrieval": TaskEntry(RetrievalConfig, RetrievalObjective),
    "rating": TaskEntry(RatingConfig, RatingObjective),
    "ctr": TaskEntry(CTRConfig, CTRObjective),
})

MULTI = "multi"             # task.kind for a weighted sum of registered tasks (task.weights)
