"""
log_dir/log.txt and log_dir/loss.png: what a run measured, as lines and as a picture.

    make_log_dir    log_dir, made and checked writable before any work starts
    Logbook         the lines of one run: a training loss per step, a validation loss
                    per evaluation, and the plot redrawn at each evaluation
    read_log        log.txt back as {kind: {step: value}}, for the plot and docs/draw.py
    plot_losses     the picture

Each line of log.txt is `step kind value seconds`: train (the training loss), val (the
validation loss) or val_bpb (its bits per byte), and the seconds of training so far,
the runs a resumed run continues included.
"""

import os

from machinery.cli import UsageError, pyplot


def make_log_dir(log_dir):
    """Create log_dir and make sure files can be written there, before any work starts."""
    try:
        os.makedirs(log_dir, exist_ok=True)
        probe = os.path.join(log_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write to log_dir {log_dir!r} ({e.strerror or e}): choose another --log_dir") from None


class Logbook:
    """log.txt of a run that starts at first_step (a new run starts a new log; a resumed
    one drops the lines of steps its checkpoint had not reached), and loss.png beside it.
    elapsed(): the seconds of training so far. Only the first process writes (main)."""

    def __init__(self, log_dir, main, first_step, elapsed, title, tokens_per_step):
        self.path, self.png = os.path.join(log_dir, "log.txt"), os.path.join(log_dir, "loss.png")
        self.main, self.elapsed, self.title, self.tokens_per_step = main, elapsed, title, tokens_per_step
        if main and os.path.exists(self.path):
            with open(self.path) as f:
                kept = [line for line in f if int(line.split()[0]) < first_step]
            with open(self.path, "w") as f:
                f.writelines(kept)
        self.plotting = main and pyplot("no loss plot") is not None  # imported now: no evaluation's time holds it

    def write(self, step, kind, value):
        """One line: the step, what was measured, its value, and the seconds of training so far."""
        if self.main:
            with open(self.path, "a") as f:
                f.write(f"{step} {kind} {value} {self.elapsed():.1f}\n")

    def evaluation(self, step, evaluation):
        """An evaluation's two lines, and the plot redrawn with them."""
        self.write(step, "val", f"{evaluation.loss:.4f}")
        self.write(step, "val_bpb", f"{evaluation.bits_per_byte:.4f}")
        if self.plotting:
            self.plotting = plot_losses(self.path, self.png, self.title, self.tokens_per_step)


def read_log(log_path):
    """{kind: {step: value}} from train.py's log.txt, whose lines are `step kind value seconds`:
    train (the training loss), val (the validation loss) and val_bpb (its bits per byte),
    and the seconds since the run began when the line was written. The seconds of the
    train lines are under "seconds" (logs from before they were written have none)."""
    curves = {"train": {}, "val": {}, "val_bpb": {}, "seconds": {}}
    with open(log_path) as f:
        for line in f:
            step, kind, value, *seconds = line.split()
            curves[kind][int(step)] = float(value)
            if kind == "train" and seconds:
                curves["seconds"][int(step)] = float(seconds[0])
    return curves


def plot_losses(log_path, png_path, title, tokens_per_step):
    """Draw the training loss of every step and the validation loss at its steps into
    png_path. Returns False, after saying so, when matplotlib cannot be imported."""
    plt = pyplot("no loss plot")
    if plt is None:
        return False
    curves = read_log(log_path)
    train_losses, val_losses = curves["train"], curves["val"]
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    ax.plot(list(train_losses), list(train_losses.values()), color="tab:blue", linewidth=1, label="training loss (each step)")
    ax.plot(list(val_losses), list(val_losses.values()), color="tab:orange", marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    tokens = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
    tokens.xaxis.set_major_formatter(lambda t, _: f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1e3:g}k" if t >= 1e3 else f"{t:g}")
    tokens.set_xlabel("tokens seen")
    if curves["val_bpb"]:
        # every evaluation reads the same tokens, so bits per byte is the validation loss
        # times one fixed factor: a second scale on the right reads it off
        last = max(curves["val_bpb"])
        ratio = curves["val_bpb"][last] / val_losses[last] if val_losses.get(last) else 1.0
        bits = ax.secondary_yaxis("right", functions=(lambda n: n * ratio, lambda b: b / ratio))
        bits.set_ylabel("validation loss in bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    tmp = png_path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)  # a viewer never sees a half-written picture
    return True
