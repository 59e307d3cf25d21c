"""Training images per second: the Lightning loop (ClassifierModule + Trainer) versus a plain PyTorch loop; with
``--compile`` the same Lightning loop with the network compiled (``ClassifierModule(compile=True)``), with
``--channels-last`` with channels-last batches (``CIFAR10DataModule(channels_last=True)``), with both flags also
compiled on channels-last batches.

Both run the same model, the same CIFAR10DataModule batches (augmented in ``on_after_batch_transfer``), the same
optimizer (Adam, lr 1e-3) and batch size, and both compute cross-entropy and a torchmetrics accuracy each step,
so the difference is the framework's overhead. Each repeat times ``--steps`` steps after ``--warmup`` steps,
alternating plain and Lightning; reported are the medians over repeats and the ratio of the medians (target:
Lightning / plain >= 0.95).

Compilation happens in each repeat's warm-up steps (use ``--warmup`` >= 3 with ``--compile``: the first steps of
each new module compile, the timed ones run the compiled code). Each variant's speed is also reported against the
eager Lightning loop of the same repeat (median of the per-repeat ratios).

    python -m benchmarks.train_throughput --data $LIT_KD_CIFAR10 --compile --channels-last --out results/train_throughput.json
"""

from __future__ import annotations

import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from torchmetrics.classification import MulticlassAccuracy

from benchmarks.common import lightning_images_per_second, machine_info, sync, training_speed_parser, write_json
from lit_kd.data import CIFAR10DataModule
from lit_kd.modules import ClassifierModule


def plain_loop(dm: CIFAR10DataModule, model_name: str, warmup: int, steps: int, device: torch.device, precision: str = "32-true") -> float:
    """Images per second of a hand-written loop over the same batches (bf16 autocast for ``bf16-mixed``)."""
    model = ClassifierModule(model_name, num_example_images=0).model.to(device).train()
    if dm.hparams.channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy = MulticlassAccuracy(10, average="micro").to(device)
    loader, step, start = dm.train_dataloader(), 0, 0.0
    for epoch in range(10**6):
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if step == warmup:
                sync(device)
                start = time.perf_counter()
            if step == warmup + steps:
                sync(device)
                return steps * dm.hparams.batch_size / (time.perf_counter() - start)
            images, target = dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)
            with autocast:
                logits = model(images)
                loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            accuracy.update(logits.detach(), target)
            step += 1
    raise RuntimeError("unreachable")


def lightning_loop(
    dm: CIFAR10DataModule, model_name: str, warmup: int, steps: int, device: torch.device, compile: bool = False, precision: str = "32-true"
) -> float:
    """Images per second of ``Trainer.fit`` with the ClassifierModule (logging on, checkpoints and validation off)."""
    module = ClassifierModule(model_name, num_example_images=0, compile=compile)
    return lightning_images_per_second(module, dm, warmup, steps, device.type, precision)


def main() -> None:
    parser = training_speed_parser(__doc__.split("\n\n")[0], "results/train_throughput.json")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time the Lightning loop with torch.compile")
    parser.add_argument("--channels-last", action="store_true", help="also time the Lightning loop on channels-last batches")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"], help="both loops (bf16-mixed: autocast)")
    parser.add_argument("--only-channels-last", action="store_true", help="every loop on channels-last batches (a GPU's layout)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dm = CIFAR10DataModule(data_dir=args.data, batch_size=args.batch_size, channels_last=args.only_channels_last)
    dm.setup("fit")
    variants = {"compiled": (dm, True)} if args.compile else {}  # name: (batches, compile)
    if args.channels_last:
        dm_channels_last = CIFAR10DataModule(data_dir=args.data, batch_size=args.batch_size, channels_last=True)
        dm_channels_last.setup("fit")
        variants["channels_last"] = (dm_channels_last, False)
        if args.compile:
            variants["compiled_channels_last"] = (dm_channels_last, True)
    plain, lightning, timed = [], [], {name: [] for name in variants}
    for repeat in range(args.repeats):
        L.seed_everything(repeat, verbose=False)
        plain.append(plain_loop(dm, args.model, args.warmup, args.steps, device, args.precision))
        L.seed_everything(repeat, verbose=False)
        lightning.append(lightning_loop(dm, args.model, args.warmup, args.steps, device, precision=args.precision))
        line = f"repeat {repeat}: plain {plain[-1]:.1f} img/s, lightning {lightning[-1]:.1f} img/s"
        for name, (batches, compile) in variants.items():
            L.seed_everything(repeat, verbose=False)
            timed[name].append(lightning_loop(batches, args.model, args.warmup, args.steps, device, compile, args.precision))
            line += f", {name.replace('_', ' ')} {timed[name][-1]:.1f} img/s"
        print(line, flush=True)
    result = {
        "benchmark": "train_throughput",
        "model": args.model,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "precision": args.precision,
        "channels_last": args.only_channels_last,
        "machine": machine_info(args.threads),
        "plain_images_per_s": plain,
        "lightning_images_per_s": lightning,
        "plain_median": statistics.median(plain),
        "lightning_median": statistics.median(lightning),
        "ratio_of_medians": statistics.median(lightning) / statistics.median(plain),
        "median_paired_ratio": statistics.median(lit / p for lit, p in zip(lightning, plain)),
    }
    summary = ""
    for name, values in timed.items():
        result |= {
            f"lightning_{name}_images_per_s": values,
            f"{name}_median": statistics.median(values),
            f"{name}_vs_eager_paired_median": statistics.median(v / e for v, e in zip(values, lightning)),
        }
        summary += f"; {name.replace('_', ' ')} {result[f'{name}_median']:.1f} img/s, {result[f'{name}_vs_eager_paired_median']:.2f}x eager"
    write_json(args.out, result)
    print(
        f"median plain {result['plain_median']:.1f} img/s, lightning {result['lightning_median']:.1f} img/s, "
        f"ratio {result['ratio_of_medians']:.3f} (paired median {result['median_paired_ratio']:.3f})" + summary + f" -> {args.out}"
    )


if __name__ == "__main__":
    main()
