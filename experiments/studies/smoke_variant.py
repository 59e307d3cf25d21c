"""Write a toy-size copy of a study file next to it (tiny data, one short epoch per fit stage, a few test batches),
so that a study meant for a long run can be checked end to end in a minute before the run (e.g. on a lent GPU):

    python experiments/studies/smoke_variant.py experiments/studies/resnet101_h200.yaml [--cpu]

prints the path of the copy (``<name>.smoke.yaml``; not tracked). ``--cpu`` sets ``trainer.accelerator: cpu``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

TOY = {
    "data.init_args.train_size": 256,
    "data.init_args.batch_size": 16,
    "data.init_args.eval_batch_size": 16,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.limit_val_batches": 1,
    "trainer.limit_test_batches": 1,
}


def smoke_variant(study: Path, cpu: bool) -> Path:
    spec = yaml.safe_load(study.read_text())
    spec["fit_overrides"] = {
        **(spec.get("fit_overrides") or {}),
        **TOY,
        **({"trainer.accelerator": "cpu", "trainer.precision": "32-true"} if cpu else {}),
    }
    for stage in spec["stages"].values():
        overrides = stage.get("overrides") or {}
        for key in ("trainer.max_epochs", "trainer.max_time"):
            overrides.pop(key, None)
        if cpu:
            overrides.pop("trainer.precision", None)
        for kind in ("export", "ptq"):
            if kind in stage and isinstance(stage[kind], dict) and "images" in stage[kind]:
                stage[kind]["images"] = 32
    out = study.with_suffix(".smoke.yaml")
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    print(smoke_variant(args.study, args.cpu))
