"""ATOMIC-2020 relations as generation tasks (``atomic_<relation>``), scored with ROUGE-L.

Data: the release's ``<data_dir>/atomic/{train,dev,test}.tsv`` (no header; fields
head, relation, tail). A task keeps the rows of its relation; ``text`` is the
head event, ``target`` the tail. Rows whose tail is ``none`` (the release's marker
for "no inference") are dropped, as in the COMET-ATOMIC-2020 setup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from routed_study.trainables.errors import InputError
from routed_study.trainables.tasks.sources import DataSource, RawRows, read_table
from routed_study.trainables.tasks.spec import TaskSpec, register_task

#: The 23 relations of ATOMIC-2020 (social, event-centred, physical).
RELATIONS = (
    "xAttr", "xEffect", "xIntent", "xNeed", "xReact", "xWant", "oEffect", "oReact", "oWant",
    "isAfter", "isBefore", "HinderedBy", "Causes", "xReason", "isFilledBy", "HasSubEvent",
    "ObjectUse", "AtLocation", "MadeUpOf", "HasProperty", "CapableOf", "Desires", "NotDesires",
)
FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
COLUMNS = ("head", "relation", "tail")


@dataclass(frozen=True)
class AtomicSource(DataSource):
    relation: str

    def read(self, task: TaskSpec, split: str, data_dir: Path) -> RawRows:
        path = data_dir / "atomic" / FILES[split]
        if not path.is_file():
            raise InputError(f"task {task.name}: {path} not found; put the ATOMIC-2020 release's "
                             f"train.tsv, dev.tsv, test.tsv (head, relation, tail) in {path.parent}")
        table = read_table(path, COLUMNS, header=False)
        # Some copies of the release carry a header row; it is not data.
        skip = 1 if [table[c][0] for c in COLUMNS] == list(COLUMNS) else 0
        rows = RawRows(str(path))
        for i in range(skip, len(table["head"])):
            relation, tail = table["relation"][i], table["tail"][i]
            if relation is None or relation.strip() not in RELATIONS:
                raise InputError(f"{path}: row {i + 1 - skip}: unknown relation {relation!r}; "
                                 f"allowed: {', '.join(RELATIONS)}")
            if relation.strip() != self.relation or (tail or "").strip().lower() == "none":
                continue
            rows.text.append(table["head"][i])
            rows.target.append(tail)
            rows.rows.append(i + 1 - skip)
        if not rows.rows:
            raise InputError(f"{path}: no rows with relation {self.relation!r} (task {task.name})")
        return rows


for _relation in RELATIONS:
    register_task(TaskSpec(f"atomic_{_relation}", "generation", (), (), None, ("rouge_l",), "rouge_l", "atomic"),
                  AtomicSource(_relation))
