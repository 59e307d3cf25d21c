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
    """After each validation epoch, log one validation image per class (the first of each, in class order; the
    first ``num_images`` classes) with its prediction.

    The figure goes to every logger that can take one (``experiment.add_figure``, e.g. TensorBoard) under
    ``val/examples``. Images are un-normalised with the datamodule's ``denormalize`` when it has one.
    """

    def __init__(self, num_images: int = 10):
        self.num_images = num_images
        self._found: dict[int, tuple] = {}

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._found = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx != 0 or trainer.sanity_checking or not isinstance(outputs, torch.Tensor):
            return
        if len(self._found) >= self.num_images:
            return
        target = batch[1].argmax(1) if batch[1].ndim == 2 else batch[1]
        predicted = outputs.argmax(1)
        for i, label in enumerate(target.tolist()):
            if label < self.num_images and label not in self._found:
                self._found[label] = (batch[0][i].detach().float(), int(predicted[i]), label)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._found or not trainer.is_global_zero:
            return
        sample = [self._found[c] for c in sorted(self._found)]
        self._found = {}
        figure_loggers = [lg for lg in trainer.loggers if hasattr(getattr(lg, "experiment", None), "add_figure")]
        if not figure_loggers:
            return
        images = torch.stack([s[0] for s in sample])
        predicted, true = [s[1] for s in sample], [s[2] for s in sample]
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
