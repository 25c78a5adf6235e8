"""
Two of README.md's pictures, drawn from the project's own code and the logs of real runs.

    python docs/draw.py     # writes docs/schedule.png and docs/recipes.png

schedule.png   the learning rate of every step, from train.py's get_lr, for the
               30-minute recipe as its Zen 4 run fixed it
recipes.png    each recipe's validation loss against the minutes its command had run,
               from the log.txt of its run on the Zen 4, kept in docs/runs/
"""

import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository, for train.py and machinery/

import train  # noqa: E402
from machinery.cli import pyplot  # noqa: E402
from machinery.logbook import read_log  # noqa: E402

# the measured runs: (label, log.txt in docs/runs/), in the order of their budgets
RUNS = [
    ("5 minutes", "5min-sized-zen4.log.txt"),
    ("10 minutes", "10min-sized-zen4.log.txt"),
    ("30 minutes", "30min-sized-zen4.log.txt"),
    ("2 hours", "2h-sized-zen4.log.txt"),
]
SCHEDULE_RUN = "30min-sized-zen4.log.txt"  # the run whose steps schedule.png shows


def recipe_config(name, max_steps):
    """train.py's Config as recipes/<name>.txt sets it, with the step count a budget fixed."""
    flags = train.parse_flags([f"@{os.path.join(os.path.dirname(HERE), 'recipes', name)}"])
    flags.pop("time_budget", None)
    flags.pop("size", None)  # the shape does not change the schedule
    return dataclasses.replace(train.Config(**flags), max_steps=max_steps)


def draw_schedule(plt, path):
    steps = max(read_log(os.path.join(HERE, "runs", SCHEDULE_RUN))["train"]) + 1
    cfg = recipe_config("30min.txt", steps)
    lrs = [train.get_lr(step, cfg.max_steps, cfg) for step in range(steps)]
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    ax.plot(range(steps), lrs, color="tab:blue", label=f"Muon's matrices (max_lr {cfg.max_lr:g})")
    ax.plot(range(steps), [lr * cfg.adamw_lr_ratio for lr in lrs], color="tab:orange",
            label=f"AdamW's embeddings, biases, LayerNorms (x {cfg.adamw_lr_ratio:g})")
    ax.axvline(cfg.warmup_steps, color="grey", linewidth=0.8, linestyle=":")
    ax.annotate(f"warmup: {cfg.warmup_steps} steps", (cfg.warmup_steps, cfg.max_lr), xytext=(30, -40),
                textcoords="offset points", arrowprops=dict(arrowstyle="->", color="grey"), fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"train.py's get_lr for the 30-minute recipe's {steps} steps: a linear warmup, then a cosine to min_lr",
                 fontsize=10)
    ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def validation_by_minute(log_path):
    """([minutes], [bits per byte]) of a run's periodic validation, from its log.txt."""
    curves = read_log(log_path)
    steps = [step for step in curves["val_bpb"] if step in curves["seconds"]]
    return [curves["seconds"][s] / 60 for s in steps], [curves["val_bpb"][s] for s in steps]


def draw_recipes(plt, path):
    fig, ax = plt.subplots(figsize=(8, 6), layout="constrained")
    for label, name in RUNS:
        minutes, bpb = validation_by_minute(os.path.join(HERE, "runs", name))
        ax.plot(minutes, bpb, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 5, 10, 30, 60, 120], ["1", "2", "5", "10", "30", "60", "120"])
    ax.set_xlabel("minutes since the command started (log scale)")
    ax.set_ylabel("validation loss, bits per byte")
    ax.set_title("The recipes' runs on a 2-core Zen 4, against the minutes of their time budgets\n"
                 "(the validation loss each evaluation prints, on a fifth of the split)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=9)  # below the axes: the curves fill them
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    plt = pyplot("no pictures")
    if plt is None:
        sys.exit(1)
    for draw, name in ((draw_schedule, "schedule.png"), (draw_recipes, "recipes.png")):
        draw(plt, os.path.join(HERE, name))
        print(f"wrote {os.path.join(HERE, name)}")


if __name__ == "__main__":
    main()
