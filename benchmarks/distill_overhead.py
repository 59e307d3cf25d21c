"""Cost of the teacher: student training images per second with and without distillation, in one run.

Same student, batches and optimizer; the distilled run adds the frozen teacher's forward pass and the ce + soft_ce
loss. Repeats alternate the two; reported are medians and the ratio of medians (with teacher / without).

    python -m benchmarks.distill_overhead --data $LIT_KD_CIFAR10 --student resnet20 --teacher resnet56
"""

from __future__ import annotations

import statistics

import lightning as L
import torch

from benchmarks.common import lightning_images_per_second, machine_info, training_speed_parser, write_json
from lit_kd.data import CIFAR10DataModule
from lit_kd.models import build_model
from lit_kd.modules import ClassifierModule, DistillationModule


def main() -> None:
    parser = training_speed_parser(__doc__.split("\n\n")[0], "results/distill_overhead.json")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher", default="resnet56")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dm = CIFAR10DataModule(data_dir=args.data, batch_size=args.batch_size)
    dm.setup("fit")
    teacher = build_model(args.teacher).eval()  # speed does not depend on the teacher's weights
    alone, distilled = [], []
    for repeat in range(args.repeats):
        L.seed_everything(repeat, verbose=False)
        alone.append(lightning_images_per_second(ClassifierModule(args.student, num_example_images=0), dm, args.warmup, args.steps))
        L.seed_everything(repeat, verbose=False)
        module = DistillationModule(
            student=args.student, teacher=teacher, losses=["ce", "soft_ce"], num_example_images=0, teacher_check_batches=0
        )
        distilled.append(lightning_images_per_second(module, dm, args.warmup, args.steps))
        print(f"repeat {repeat}: student alone {alone[-1]:.1f} img/s, with teacher {distilled[-1]:.1f} img/s", flush=True)
    result = {
        "benchmark": "distill_overhead",
        "student": args.student,
        "teacher": args.teacher,
        "batch_size": args.batch_size,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "repeats": args.repeats,
        "machine": machine_info(args.threads),
        "student_alone_images_per_s": alone,
        "with_teacher_images_per_s": distilled,
        "student_alone_median": statistics.median(alone),
        "with_teacher_median": statistics.median(distilled),
        "ratio_of_medians": statistics.median(distilled) / statistics.median(alone),
    }
    write_json(args.out, result)
    print(
        f"median student alone {result['student_alone_median']:.1f} img/s, with teacher {result['with_teacher_median']:.1f} "
        f"img/s, ratio {result['ratio_of_medians']:.3f} -> {args.out}"
    )


if __name__ == "__main__":
    main()
