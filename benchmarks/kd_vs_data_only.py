"""Does distillation help? The same student trained on data only and with ce + soft_ce from a frozen teacher.

Same seed, data subset, augmentation, optimizer, schedule and number of steps for both; the final model (no
checkpoint selection) is tested on the full CIFAR-10 test set. Several seeds; JSON with every run and the means.

    python -m benchmarks.kd_vs_data_only --data $LIT_KD_CIFAR10 --teacher-ckpt path/to/teacher.ckpt \
        --student resnet8 --train-size 10000 --epochs 5 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial

import lightning as L
import torch

from benchmarks.common import machine_info, write_json
from lit_kd.data import CIFAR10DataModule
from lit_kd.modules import ClassifierModule, DistillationModule, load_network


def train_and_test(module: L.LightningModule, dm: CIFAR10DataModule, epochs: int) -> tuple[float, float]:
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=epochs,
        deterministic=True,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    seconds = time.perf_counter() - start
    accuracy = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    return accuracy, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=os.environ.get("LIT_KD_CIFAR10", "data/cifar10"),
        help="CIFAR-10 source (default $LIT_KD_CIFAR10, else data/cifar10)",
    )
    parser.add_argument("--teacher-ckpt", required=True)
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="results/kd_vs_data_only.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    teacher = load_network(args.teacher_ckpt)
    steps = args.epochs * (args.train_size // args.batch_size)
    optimizer = partial(torch.optim.SGD, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=args.lr, total_steps=steps, pct_start=0.15, div_factor=10.0)
    common = dict(optimizer=optimizer, lr_scheduler=schedule, scheduler_interval="step", num_example_images=0)
    runs = []
    teacher_acc = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        ClassifierModule(teacher, num_example_images=0), CIFAR10DataModule(data_dir=args.data, eval_batch_size=1000), verbose=False
    )[0]["test/acc"]
    print(f"teacher test accuracy {teacher_acc:.4f}", flush=True)
    for seed in args.seeds:
        dm = CIFAR10DataModule(data_dir=args.data, batch_size=args.batch_size, eval_batch_size=1000, train_size=args.train_size, seed=seed)
        L.seed_everything(seed, verbose=False)
        data_only, data_seconds = train_and_test(ClassifierModule(args.student, **common), dm, args.epochs)
        L.seed_everything(seed, verbose=False)
        distilled_module = DistillationModule(
            student=args.student, teacher=teacher, losses=["ce", "soft_ce"], temperature=args.temperature, **common
        )
        distilled, kd_seconds = train_and_test(distilled_module, dm, args.epochs)
        runs.append(
            {"seed": seed, "data_only": data_only, "distilled": distilled, "data_only_fit_s": data_seconds, "distilled_fit_s": kd_seconds}
        )
        print(f"seed {seed}: data only {data_only:.4f}, ce + soft_ce {distilled:.4f} ({distilled - data_only:+.4f})", flush=True)
    result = {
        "benchmark": "kd_vs_data_only",
        "student": args.student,
        "teacher_ckpt": args.teacher_ckpt,
        "teacher_test_acc": teacher_acc,
        "train_size": args.train_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": f"SGD nesterov lr {args.lr} wd 5e-4, one-cycle over {steps} steps",
        "losses": f"data only: ce; distilled: mean(ce, soft_ce), T = {args.temperature:g}",
        "machine": machine_info(args.threads),
        "runs": runs,
        "data_only_mean": statistics.mean(r["data_only"] for r in runs),
        "distilled_mean": statistics.mean(r["distilled"] for r in runs),
    }
    result["gain_mean"] = result["distilled_mean"] - result["data_only_mean"]
    write_json(args.out, result)
    print(
        f"mean over seeds {args.seeds}: data only {result['data_only_mean']:.4f}, distilled {result['distilled_mean']:.4f}, "
        f"gain {result['gain_mean']:+.4f} -> {args.out}"
    )


if __name__ == "__main__":
    main()
