"""
The training curve: train.py redraws log/loss.png from log/log.txt at every evaluation.
"""

import os


def read_log(log_path):
    """({step: training loss}, {step: validation loss}) from train.py's log.txt."""
    curves = {"train": {}, "val": {}}
    with open(log_path) as f:
        for line in f:
            step, kind, loss = line.split()
            curves[kind][int(step)] = float(loss)
    return curves["train"], curves["val"]


def plot_losses(log_path, png_path, title, tokens_per_step):
    """Draw the training loss of every step and the validation loss at its steps into
    png_path. Returns False, after saying so once, when matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # draw to a file; no window, no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"no loss plot: matplotlib cannot be imported ({e}); training goes on (pip install matplotlib)")
        return False
    train, val = read_log(log_path)
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    ax.plot(list(train), list(train.values()), color="tab:blue", linewidth=1, label="training loss (each step)")
    ax.plot(list(val), list(val.values()), color="tab:orange", marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    tokens = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
    tokens.xaxis.set_major_formatter(lambda t, _: f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1e3:g}k" if t >= 1e3 else f"{t:g}")
    tokens.set_xlabel("tokens seen")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    tmp = png_path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)  # a viewer never sees a half-written picture
    return True

