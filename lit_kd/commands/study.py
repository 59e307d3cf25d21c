"""``lit-kd study STUDY.yaml``: run a whole compression study, resumably, and write its report.

    lit-kd study experiments/studies/demo.yaml --out runs/demo      # run what is not finished, then report
    lit-kd study experiments/studies/cifar_cpu.yaml --dry-run        # the plan: run / resume / skip, and why
    lit-kd study STUDY.yaml --only ptq report                        # (re)run just these stages
    lit-kd study STUDY.yaml --from qat                               # (re)run this stage and everything after it
    lit-kd study STUDY.yaml --use teacher=weights/resnet20_teacher.pt  # shipped weights instead of training a stage

Exit status: 0 done, 1 a stage failed (the message names it and the command that resumes), 2 a bad study file or
bad arguments (nothing ran).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from rich.console import Console


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lit-kd study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="a study file (experiments/studies/*.yaml)")
    p.add_argument("--out", help="where the stages and the report go (default runs/<study name>)")
    p.add_argument(
        "--data",
        default=os.environ.get("LIT_KD_CIFAR10") or "data/cifar10",
        help="CIFAR-10 source for every stage (default $LIT_KD_CIFAR10, else data/cifar10, downloaded when missing)",
    )
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (a seeded stage's name runs all its seeds)")
    p.add_argument("--from", dest="start", metavar="STAGE", help="run this stage and every stage after it, whatever their state")
    p.add_argument(
        "--use",
        nargs="+",
        default=[],
        metavar="STAGE=FILE",
        help="let trained weights (a plain state dict, e.g. weights/resnet20_teacher.pt) stand in for a fit stage",
    )
    p.add_argument(
        "--without",
        nargs="+",
        default=[],
        metavar="STAGE",
        help="leave these stages out, with every stage that consumes their outputs (e.g. the sparse ones without the sparse extra)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    from lit_kd.study.spec import StudyError, load_study  # no torch import: a broken study file fails fast

    cli = parser()
    args = cli.parse_args(argv)
    if any("=" not in u for u in args.use):
        cli.error(f"--use takes STAGE=FILE pairs, got {[u for u in args.use if '=' not in u]}")
    use = dict(u.split("=", 1) for u in args.use)
    console = Console(width=None if sys.stdout.isatty() else 150)
    out = Path(args.out or Path("runs") / Path(args.study).stem).resolve()
    data = args.data
    try:
        study = load_study(args.study, use, args.without)
        if args.without:
            full = load_study(args.study, use)
            console.print("left out (--without): " + ", ".join(n for n in full.stages if n not in study.stages))
        from lit_kd.study.runner import Runner

        runner = Runner(study, out, str(Path(data).resolve()) if Path(data).exists() else data, console)
        steps = runner.plan(args.only, args.start)
        runner.print_plan(steps)
        runner.validate(steps)
        if args.dry_run:
            return 0
        if not Path(data).exists():
            from lit_kd.data import load_cifar10_arrays

            load_cifar10_arrays(data, download=True)  # a user with internet: torchvision's download, once
        out.mkdir(parents=True, exist_ok=True)
        resume = shlex.join(
            [
                "lit-kd",
                "study",
                args.study,
                "--out",
                str(out),
                "--data",
                data,
                *(["--use", *args.use] if args.use else []),
                *(["--without", *args.without] if args.without else []),
            ]
        )
        return runner.run(steps, resume)
    except StudyError as err:
        Console(stderr=True, width=None if sys.stderr.isatty() else 150).print(f"lit-kd study: [bold red]error:[/] {err}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
