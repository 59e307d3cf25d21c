"""The README's headline table, rendered from a study's ``results.json`` (written by :mod:`lit_kd.study.report`).

    python -m lit_kd.study.headline results/cifar_cpu/results.json                      # print the table
    python -m lit_kd.study.headline results/cifar_cpu/results.json --readme README.md   # put it into the README

Rows, each only when the study has the data behind it: the teacher; the student on data only and the best distilled
student (mean and spread over seeds, delta to data only; chosen among setups run with at least the baseline's
seeds); our PTQ at W8A8, W4A4 and W2A8 with AdaRound (the smallest drop among the configurations measured at those
widths) beside PyTorch's INT8; mixed precision (the chosen weight widths); QAT (real INT8 against its FP32 start);
pruned + INT8 and pruned-to-a-budget models against the best student; DeepSparse's speed against PyTorch's at batch
32. Every number is formatted from the JSON, none is typed by hand. With ``--readme`` the table replaces whatever
lies between the ``<!-- headline:start -->`` and ``<!-- headline:end -->`` lines (the rest of the file stays
byte-identical; written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from lit_kd.atomic import write_bytes

START, END = "<!-- headline:start -->", "<!-- headline:end -->"
FULL_TEST_SET = 10_000  # CIFAR-10's test split: rows measured on fewer images say so


class HeadlineError(ValueError):
    """A results file or README the headline cannot be made from; the message says what is wrong."""


# ------------------------------------------------------------------------------------------------ formatting
def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def pts(x: float) -> str:
    return f"{100 * x:+.2f} points"


def mean_std(mean: float, std: float | None) -> str:
    return pct(mean) if std is None else f"{100 * mean:.2f} ± {100 * std:.2f} %"


def seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def on_images(n: int | None) -> str:
    return "" if n is None or n >= FULL_TEST_SET else f" (on {n:,} test images)"


# ------------------------------------------------------------------------------------------------ rows
Row = tuple[str, str, str]  # what, result, compared with


def _models(results: dict) -> dict[str, dict]:
    return {m["stage"]: m for m in results.get("models") or []}


def _group_of(results: dict, stage: str) -> str:
    return (results.get("stages", {}).get(stage) or {}).get("group") or stage


def _best_student(results: dict) -> dict | None:
    """The model record a ``select`` stage chose (the best student by test accuracy)."""
    models = _models(results)
    for s in (results.get("stages") or {}).values():
        chosen = (s.get("metrics") or {}).get("chosen") if s.get("kind") == "select" else None
        if chosen in models:
            return models[chosen]
    return None


def teacher_rows(results: dict) -> list[Row]:
    t = _models(results).get("teacher")
    if not t:
        return []
    return [(f"Teacher `teacher` ({t['architecture']}, {t['params']:,} parameters)", pct(t["test_acc"]), "")]


def distillation_rows(results: dict) -> list[Row]:
    records = results.get("distillation") or []
    # the report lists the data-only baseline first, and gives every other row a delta to it; without the baseline's
    # accuracy no row has a delta, and there is nothing to headline
    if not records or records[0].get("delta_vs_baseline") is not None:
        return []
    if len(records) > 1 and all(r.get("delta_vs_baseline") is None for r in records[1:]):
        return []
    base, others = records[0], [r for r in records[1:] if r.get("delta_vs_baseline") is not None]
    arch = {_group_of(results, m["stage"]): m["architecture"] for m in results.get("models") or []}
    rows = [
        (
            f"Student on data only `{base['stage']}` ({arch.get(base['stage'], '?')}, {seeds(base['seeds'])})",
            mean_std(base["mean"], base["std"]),
            "",
        )
    ]
    # the comparison uses the same seeds on both sides: setups run with fewer seeds than the baseline are named beside
    # the best one when they score higher, never chosen over it (one lucky seed is not a mean)
    paired = [r for r in others if r["seeds"] >= base["seeds"]]
    if others:
        candidates = paired or others
        best = max(candidates, key=lambda r: r["mean"])
        compared = f"{pts(best['delta_vs_baseline'])} vs data only"
        early = (best.get("val_acc_at_equal_epochs"), base.get("val_acc_at_equal_epochs"))
        if None not in early:  # the stopping rule may have trained the two for different numbers of epochs
            compared += f"; {pts(early[0] - early[1])} in validation accuracy after {best['equal_epochs']} epochs each"
        higher = [r for r in others if r not in candidates and r["mean"] > best["mean"]]
        if higher:
            compared += "; higher with fewer seeds: " + ", ".join(f"`{r['stage']}` {pct(r['mean'])} ({seeds(r['seeds'])})" for r in higher)
        among = f"best of {len(candidates)} distillation setups"
        if paired and len(paired) < len(others):
            among += " with the data-only seeds"
        rows.append(
            (
                f"Best distilled student `{best['stage']}` ({seeds(best['seeds'])}; {among})",
                mean_std(best["mean"], best["std"]),
                compared,
            )
        )
    return rows


def ptq_rows(results: dict) -> list[Row]:
    measured = []  # (stage, row, fp32 accuracy, test images)
    for stage, rows in (results.get("ptq") or {}).items():
        fp32 = next((r["acc"] for r in rows if r["runtime"] == "fp32"), None)
        images = ((results.get("stages") or {}).get(stage, {}).get("metrics") or {}).get("test_images")
        measured += [(stage, r, fp32, images) for r in rows if r["runtime"] != "fp32" and fp32 is not None]

    def row(label: str, candidates: list) -> list[Row]:
        if not candidates:
            return []
        stage, r, fp32, images = min(candidates, key=lambda c: c[1]["drop"])
        details = ", ".join(
            x
            for x in (
                r["method"],
                r["granularity"].replace("_", "-") if r["granularity"] != "-" else "",
                "first/last layer 8-bit" if r["first_last_8bit"] else "",
            )
            if x
        )
        best_of = f"; best of {len(candidates)}" if len(candidates) > 1 else ""
        return [
            (f"{label} `{stage}` ({details}{best_of})", pct(r["acc"]), f"{pts(r['acc'] - fp32)} vs FP32 {pct(fp32)}{on_images(images)}")
        ]

    def ours(wb: int, ab: int, adaround: bool = False) -> list:
        return [
            c
            for c in measured
            if c[1]["runtime"] == "ours"
            and (c[1]["weight_bits"], c[1]["act_bits"]) == (wb, ab)
            and (not adaround or "adaround" in c[1]["method"])
        ]

    pytorch_int8 = [c for c in measured if c[1]["runtime"] == "pytorch" and c[1]["weight_bits"] == 8]
    return (
        row("Our PTQ W8A8", ours(8, 8))
        + row("PyTorch INT8 PTQ", pytorch_int8)
        + row("Our PTQ W4A4", ours(4, 4))
        + row("Our PTQ W2A8 with AdaRound", ours(2, 8, adaround=True))
    )


def mixed_precision_rows(results: dict) -> list[Row]:
    rows = []
    for stage, mp in (results.get("mixed_precision") or {}).items():
        search = ((results.get("stages") or {}).get(stage, {}).get("metrics") or {}).get("search") or {}
        acc = mp.get("test_acc") or {}
        if "chosen" not in acc or "fp32" not in acc:
            continue
        widths = Counter((search.get("chosen") or {}).get("weight_bits", {}).values())
        layers = ", ".join(f"{n} at {b} bits" for b, n in sorted(widths.items(), reverse=True))
        act = f", activations {search['act_bits']}-bit" if "act_bits" in search else ""
        if search.get("layer_act_bits"):
            from lit_kd.quant.search_report import act_label

            act = f", activations {act_label(search['layer_act_bits'], search.get('act_bits'))}"
        budget = f" (budget {100 * search['max_drop']:.1f} points)" if "max_drop" in search else ""
        what = f"Mixed precision `{stage}`{budget}: weights {mp['chosen_average_weight_bits']:.2f} bits on average{act}"
        if layers:
            what += f" (layers: {layers})"
        size = (
            f"; weights {mp['chosen_weight_bytes'] / 1024:.1f} KiB vs {mp['uniform_int8_weight_bytes'] / 1024:.1f} KiB in INT8"
            if "chosen_weight_bytes" in mp and "uniform_int8_weight_bytes" in mp
            else ""
        )
        rows.append(
            (
                what,
                pct(acc["chosen"]),
                f"{pts(acc['chosen'] - acc['fp32'])} vs FP32 {pct(acc['fp32'])}{on_images(mp.get('test_images'))}{size}",
            )
        )
    return rows


def qat_rows(results: dict) -> list[Row]:
    rows = []
    for q in results.get("qat") or []:
        compared = (
            ""
            if q.get("fp32_acc") is None
            else f"{pts(q['int8_test_acc'] - q['fp32_acc'])} vs its FP32 start `{q['started_from']}` {pct(q['fp32_acc'])}"
        )
        rows.append((f"QAT `{q['stage']}`, real INT8 kernels", pct(q["int8_test_acc"]), compared))
    return rows


def sparse_rows(results: dict) -> list[Row]:
    """Pruned models: those with an INT8 ONNX export as "sparse + INT8", the others as "pruned to N non-zero"."""
    models, stages = _models(results), results.get("stages") or {}
    best = _best_student(results)
    versus = f"vs the best student `{best['stage']}` {pct(best['test_acc'])} (dense)" if best else ""
    int8_exports = {}  # stage of the exported checkpoint -> export record
    for e in results.get("exports") or []:
        if e.get("precision") == "int8" and e.get("weight_sparsity", 0) > 0:
            ckpt = ((stages.get(e["stage"]) or {}).get("metrics") or {}).get("checkpoint")
            owner = next((n for n, s in stages.items() if ckpt and ckpt in (s.get("outputs") or {}).values() and n in models), None)
            if owner:
                int8_exports[owner] = e
    rows = []
    for name, m in models.items():
        if not m["params"] or m["nonzero_params"] >= 0.95 * m["params"]:
            continue
        delta = f"{pts(m['test_acc'] - best['test_acc'])} " if best and best is not m else ""
        compared = (delta + versus) if best and best is not m else ""
        if name in int8_exports:
            e = int8_exports[name]
            deployed = f"; DeepSparse {pct(e['deepsparse']['acc'])}{on_images(e.get('images'))}" if "acc" in e.get("deepsparse", {}) else ""
            rows.append(
                (
                    f"{100 * e['weight_sparsity']:.0f} % sparse + INT8 `{name}` ({m['nonzero_params']:,} non-zero parameters)",
                    f"{pct(m['test_acc'])} (PyTorch){deployed}",
                    compared,
                )
            )
        else:
            rows.append(
                (f"Pruned to {m['nonzero_params']:,} non-zero parameters `{name}` (of {m['params']:,})", pct(m["test_acc"]), compared)
            )
    return rows


def speed_rows(results: dict, batch: int = 32) -> list[Row]:
    speed = results.get("speed") or {}
    rows = [r for r in speed.get("rows") or [] if r.get("batch") == batch]
    fast = next((r for r in rows if r["runtime"] == "deepsparse" and "dense" not in r["model"]), None)
    pytorch = [r for r in rows if r["runtime"].startswith("pytorch")]
    if not fast or not pytorch:
        return []
    compared = "; ".join(
        f"{fast['images_per_s'] / r['images_per_s']:.2f}x PyTorch {r['model']} at {r['images_per_s']:,.0f} images/s"
        for r in sorted(pytorch, key=lambda r: -r["images_per_s"])
    )
    cpu = (results.get("machine") or {}).get("cpu") or {}
    where = f", {cpu['cores_used']} cores" if cpu.get("cores_used") else ""
    return [(f"DeepSparse, {fast['model']}, batch {batch}{where}", f"{fast['images_per_s']:,.0f} images/s", compared)]


def headline_rows(results: dict) -> list[Row]:
    return (
        teacher_rows(results)
        + distillation_rows(results)
        + ptq_rows(results)
        + mixed_precision_rows(results)
        + qat_rows(results)
        + sparse_rows(results)
        + speed_rows(results)
    )


# ------------------------------------------------------------------------------------------------ rendering
def report_link(results_path: Path, relative_to: Path) -> str:
    """The study's report beside its results.json (``report.md``, else ``report.html``, else the JSON itself),
    as a path relative to the folder the Markdown lives in."""
    target = next((p for p in (results_path.with_name("report.md"), results_path.with_name("report.html")) if p.exists()), results_path)
    return Path(os.path.relpath(target.resolve(), relative_to.resolve())).as_posix()


def render(results: dict, link: str, source: str = "results.json", command: str | None = None) -> str:
    """The headline as Markdown: a table and a line that names its source and links the full report."""
    rows = headline_rows(results)
    if not rows:
        raise HeadlineError(f"{source} has none of the results the headline shows (models, distillation, ptq, qat, speed)")
    cpu = (results.get("machine") or {}).get("cpu") or {}
    machine = f" Measured on {cpu['cpu']} ({cpu.get('isa', '?')}, VNNI {'yes' if cpu.get('vnni') else 'no'})." if cpu.get("cpu") else ""
    command = command or f"python -m lit_kd.study.headline {source}"
    lines = [f"<!-- generated by `{command}`; do not edit by hand -->", "", "| what | result | compared with |", "|---|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    lines += [
        "",
        f"Study `{results.get('study', '?')}`: test accuracy on the CIFAR-10 test set unless a row says otherwise; "
        f'"best of N" is the configuration with the smallest drop among the N measured.{machine} '
        f"Every number is read from `{source}`; the full report: [{link}]({link}).",
    ]
    return "\n".join(lines)


def replace_between_markers(text: str, block: str, name: str = "README", start_marker: str = START, end_marker: str = END) -> str:
    """``text`` with every line between the start and end marker lines replaced by ``block``; the marker lines and
    everything outside them are kept byte for byte. A marker counts only alone on its line (a mention of it inside
    a sentence, as in the docs, is not one)."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == start_marker]
    ends = [i for i, line in enumerate(lines) if line.strip() == end_marker]
    if len(starts) != 1 or len(ends) != 1:
        raise HeadlineError(
            f"{name} must contain the lines {start_marker} and {end_marker} exactly once each, each alone on its line "
            f"(found {len(starts)} and {len(ends)}); add them around the place the table goes"
        )
    start, end = starts[0], ends[0]
    if end < start:
        raise HeadlineError(f"{name}: {end_marker} comes before {start_marker}; put the end marker after the start marker")
    newline = "\r\n" if lines[start].endswith("\r\n") else "\n"
    body = "".join(line + newline for line in block.splitlines())
    return "".join(lines[: start + 1]) + body + "".join(lines[end:])


def update_readme(readme: Path, block: str) -> bool:
    """Replace the headline in ``readme`` atomically; returns whether its content changed."""
    try:
        text = readme.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise HeadlineError(f"{readme} does not exist") from None
    new = replace_between_markers(text, block, str(readme))
    if new == text:
        return False
    write_bytes(readme, new.encode("utf-8"))  # byte for byte: no newline translation, always UTF-8
    return True


def load_results(path: Path) -> dict:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadlineError(f"{path} does not exist (a study writes <out>/results.json in its report stage)") from None
    except json.JSONDecodeError as err:
        raise HeadlineError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(results, dict) or "stages" not in results:
        raise HeadlineError(f"{path} is not a study's results.json (no 'stages'; see lit_kd/study/report.py)")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lit_kd.study.headline", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a study's results.json, e.g. results/cifar_cpu/results.json")
    parser.add_argument("--readme", type=Path, help=f"replace the text between {START} and {END} in this file instead of printing")
    args = parser.parse_args(argv)
    try:
        results = load_results(args.results)
        where = args.readme.parent if args.readme else Path.cwd()
        source = Path(os.path.relpath(args.results.resolve(), where.resolve())).as_posix()
        command = f"python -m lit_kd.study.headline {source}" + (f" --readme {args.readme.name}" if args.readme else "")
        block = render(results, report_link(args.results, where), source, command)
        if args.readme is None:
            print(block)
            return 0
        changed = update_readme(args.readme, block)
    except HeadlineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.readme}: headline {'updated' if changed else 'already up to date'} from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
