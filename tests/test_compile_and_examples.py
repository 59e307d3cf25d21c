"""ClassifierModule(compile=True) trains the same network under the same names; val/examples shows one image per
class."""

from __future__ import annotations

import torch

from lit_kd.callbacks.sample_predictions import SamplePredictions
from lit_kd.modules import ClassifierModule


def test_compiled_module_keeps_names_and_computes_the_same_function():
    torch.manual_seed(0)
    eager = ClassifierModule("resnet8", num_example_images=0).eval()
    compiled = ClassifierModule("resnet8", num_example_images=0, compile=True).eval()
    assert eager.state_dict().keys() == compiled.state_dict().keys()  # checkpoints and resume are unchanged
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-4)
    assert compiled.model._compiled_call_impl is not None and eager.model._compiled_call_impl is None


class _Trainer:
    sanity_checking, is_global_zero, loggers, datamodule = False, True, [], None


def test_sample_predictions_take_the_first_image_of_each_class_across_batches():
    callback = SamplePredictions(num_images=3)
    trainer = _Trainer()
    callback.on_validation_epoch_start(trainer, None)
    batches = [torch.tensor([2, 2, 0]), torch.tensor([0, 5, 1]), torch.tensor([1, 2, 0])]
    for i, labels in enumerate(batches):
        images = torch.arange(len(labels) * 3 * 4 * 4, dtype=torch.float).view(len(labels), 3, 4, 4) + 1000 * i
        logits = torch.nn.functional.one_hot((labels + 1) % 10, 10).float()  # predicts label + 1
        callback.on_validation_batch_end(trainer, None, logits, (images, labels), i)
    found = callback._found
    assert sorted(found) == [0, 1, 2]  # class 5 is past num_images
    assert [found[c][2] for c in (0, 1, 2)] == [0, 1, 2] and [found[c][1] for c in (0, 1, 2)] == [1, 2, 3]
    assert found[2][0][0, 0, 0] == 0 and found[0][0][0, 0, 0] == 2 * 48 and found[1][0][0, 0, 0] == 1000 + 2 * 48
