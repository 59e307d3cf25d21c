"""Test accuracy against wall time of a finished (or running) training run, read from its TensorBoard events.

With validation on the test set (``val_split: 0``, as the CPU study's configs do), ``val/acc`` after each epoch is
the test accuracy; the wall time of each point is the event's own timestamp, counted from the run's first event
(the logger's creation, just before the first training step). Reported: the curve, the first epoch and minute at
which each threshold was reached, and the final accuracy. A resumed run's pause between processes is not removed:
the JSON says how many separate processes wrote events.

    python -m benchmarks.time_to_accuracy ~/lit-kd-runs/cifar_cpu/teacher/run --thresholds 0.90 0.91 0.925 \
        --out results/time_to_accuracy.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lit_kd.atomic import write_json


def accuracy_over_time(run_dir: str | Path, tag: str = "val/acc") -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).glob("events.out.tfevents.*"))
    if not files:
        raise SystemExit(f"error: no TensorBoard event files in {run_dir}")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        raise SystemExit(f"error: {run_dir} has no {tag!r} scalars (has {sorted(events.Tags()['scalars'])})")
    start = events.FirstEventTimestamp()  # the event file's creation, not the first scalar (the end of epoch 1)
    epochs = {e.step: int(e.value) for e in events.Scalars("epoch")} if "epoch" in events.Tags()["scalars"] else {}
    curve = [
        {"epoch": epochs.get(e.step, e.step) + 1, "step": e.step, "minutes": (e.wall_time - start) / 60, "acc": e.value}
        for e in events.Scalars(tag)
    ]
    return {"run_dir": str(run_dir), "tag": tag, "event_files": len(files), "curve": curve}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", help="a Lightning run folder with TensorBoard events (e.g. <out>/teacher/run)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.90, 0.91, 0.925])
    p.add_argument("--tag", default="val/acc")
    p.add_argument("--out", default="results/time_to_accuracy.json")
    args = p.parse_args(argv)
    result = accuracy_over_time(args.run_dir, args.tag)
    result["reached"] = {}
    for threshold in args.thresholds:
        hit = next((point for point in result["curve"] if point["acc"] >= threshold), None)
        result["reached"][str(threshold)] = None if hit is None else {"epoch": hit["epoch"], "minutes": round(hit["minutes"], 1)}
        print(f"{args.tag} >= {threshold}: " + ("not reached" if hit is None else f"epoch {hit['epoch']}, {hit['minutes']:.1f} min"))
    last = result["curve"][-1]
    result["final"] = last
    print(f"final: {last['acc']:.4f} after epoch {last['epoch']}, {last['minutes']:.1f} min ({result['event_files']} event file(s))")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
