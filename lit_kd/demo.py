"""``make demo``: the quickstart study end to end: fit ResNet-20 on a CIFAR-10 subset, then test the best checkpoint.

Data: ``$LIT_KD_CIFAR10`` (an image-folder zip such as cifar10-png.zip) when set; otherwise torchvision downloads
CIFAR-10 into ``data/cifar10``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from lit_kd.cli import run

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.yaml"


def main() -> None:
    source = os.environ.get("LIT_KD_CIFAR10")
    data_args = ["--data.data_dir", source] if source else ["--data.data_dir", "data/cifar10", "--data.download", "true"]
    start = time.perf_counter()
    fitted = run(["fit", "--config", str(CONFIG), *data_args])
    fit_seconds = time.perf_counter() - start
    best = fitted.trainer.checkpoint_callback.best_model_path
    tested = run(["test", "--config", str(CONFIG), *data_args, "--ckpt_path", best])
    accuracy = tested.trainer.callback_metrics["test/acc"].item()
    print(
        f"\nquickstart: fit {fit_seconds:.0f} s ({fitted.trainer.current_epoch} epochs), "
        f"test accuracy {accuracy:.4f} on {len(tested.datamodule.splits['test'])} test images, best checkpoint {best}\n"
        f"TensorBoard: tensorboard --logdir {Path(best).parents[2]}"
    )


if __name__ == "__main__":
    main()
