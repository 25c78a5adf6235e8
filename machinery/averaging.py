"""
Averaged weights: an exponential moving average (EMA) of the weights over the steps.

Late in a run that reads a small text many times, each step's weights move around a
point that generalises better than any one of them; their average sits nearer to it.
With --ema_decay d, after each step

    average = d x average + (1 - d) x weights

so the average remembers about the last 1 / (1 - d) steps. The checkpoint's "model" is
then the average, which sampling, the export and the final evaluation read; the weights
training goes on from are kept under "training_weights", which a resumed run continues.

    WeightAverage   the average, kept beside the model and saved with it
"""

from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightAverage:
    """The moving average of model's weights (torch's AveragedModel, on the model's
    device), going on from the average a resumed checkpoint saved, if it has one. With
    decay 0 there is no average, and the model's own weights stand for it."""

    def __init__(self, model, decay, resumed=None):
        self.decay = decay
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay > 0 else None
        if self.ema is not None and resumed is not None and "training_weights" in resumed:
            self.ema.module.load_state_dict(resumed["model"])
            self.ema.n_averaged.fill_(1)  # averaging goes on from it, instead of starting over from the weights

    def update(self, model):
        """Fold the weights after this step into the average."""
        if self.ema is not None:
            self.ema.update_parameters(model)

    def weights(self, model):
        """The model whose weights are the ones to keep: the average, or model itself."""
        return model if self.ema is None else self.ema.module

    def __str__(self):
        return "the last step's weights" if self.ema is None else f"the weights' moving average (decay {self.decay})"
