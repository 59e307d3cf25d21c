"""SamplePredictions: a figure of example validation images with predicted and true labels, for TensorBoard."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def predictions_figure(images: torch.Tensor, predicted, true, class_names=None, columns: int = 5):
    """A matplotlib figure of images (N, 3, H, W in [0, 1]) titled ``pred / true``, wrong ones in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.3 * rows), squeeze=False)
    name = (lambda i: class_names[i]) if class_names else str
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, p, t in zip(axes.flat, images, predicted, true):
        ax.imshow(img.permute(1, 2, 0).float().cpu().numpy())
        ax.set_title(f"{name(int(p))} / {name(int(t))}", fontsize=9, color="black" if int(p) == int(t) else "red")
    fig.suptitle("predicted / true")
    fig.tight_layout()
    return fig


class SamplePredictions(Callback):
    """After each validation epoch, log the first ``num_images`` validation images with their predictions.

    The figure goes to every logger that can take one (``experiment.add_figure``, e.g. TensorBoard) under
    ``val/examples``. Images are un-normalised with the datamodule's ``denormalize`` when it has one.
    """

    def __init__(self, num_images: int = 10):
        self.num_images = num_images
        self._sample = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not isinstance(outputs, torch.Tensor):
            return
        images, target = batch[0][: self.num_images], batch[1][: self.num_images]
        target = target.argmax(1) if target.ndim == 2 else target
        self._sample = (images.detach().float(), outputs[: self.num_images].argmax(1), target)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._sample is None or not trainer.is_global_zero:
            return
        images, predicted, true = self._sample
        self._sample = None
        figure_loggers = [lg for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_figure")]
        if not figure_loggers:
            return
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "denormalize"):
            images = dm.denormalize(images)
        else:  # unknown normalisation: stretch each image to [0, 1]
            lo = images.amin(dim=(1, 2, 3), keepdim=True)
            images = (images - lo) / (images.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-8)
        fig = predictions_figure(images, predicted, true, getattr(dm, "classes", None))
        for lg in figure_loggers:
            lg.experiment.add_figure("val/examples", fig, global_step=trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(fig)
