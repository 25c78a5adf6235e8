"""
The time budget: how many training steps fit in the minutes a learner gives a run.

    python train.py --time_budget 30   # the whole command ends within 30 minutes

train.py times its first steps (the warmup, whose length is fixed in steps), its first
evaluation and its first checkpoint. From those it fixes max_steps, and the learning-rate
schedule with it, so that the steps left, the evaluations spread over them and the final
evaluation end within the budget, counted from the moment the process started. A
machine's speed drifts, so at each later evaluation it measures again and moves the last
step if it must, and between evaluations it moves it earlier when the steps slow down.
The arithmetic lives here, on a clock that tests can replace.
"""

import math
import os
import time

from machinery.cli import UsageError

MIN_TIMED_STEPS = 3  # the first step warms up, so at least two more give a typical step time
EXIT_SECONDS = 2.0  # after the final evaluation: its closing lines and the exit (train.py skips the teardown)
SPARE_STEPS = 0.5  # left unplanned at the end: a 5-minute run planned to the second ended 2.4 s late


def process_age():
    """Seconds since this process started (start-up and imports included), from /proc on
    Linux; 0.0 where /proc cannot say, and the budget then counts from the first call."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start, in ticks after boot
    except (OSError, ValueError, IndexError):
        return 0.0


class Clock:
    """Seconds since the process started, on a monotonic clock; `now` can be replaced in tests."""

    def __init__(self, now=time.monotonic, age=None):
        self.now = now
        self.started = now() - (process_age() if age is None else age)

    def elapsed(self):
        return self.now() - self.started


def timed_steps(warmup_steps):
    """The steps timed before the step count is fixed: the whole warmup, whose learning
    rates do not depend on max_steps, and at least MIN_TIMED_STEPS."""
    return max(warmup_steps, MIN_TIMED_STEPS)


def check_fits(minutes, elapsed, final_seconds, done):
    """A UsageError when the budget cannot hold what is done already (start-up, compiling
    and the first steps, in elapsed) and the final evaluation: checked after the first
    step, and again once the first evaluation has said what the final one will cost."""
    needed = elapsed + final_seconds + EXIT_SECONDS
    if needed > minutes * 60:
        final = f" and the final evaluation about {final_seconds:.0f} s more" if final_seconds else ""
        raise UsageError(f"--time_budget {minutes:g} is too short for this run: {done} took {elapsed:.0f} s{final}; "
                         f"raise --time_budget to at least {math.ceil(needed / 60)}, or train a smaller model")


def steps_that_fit(seconds_left, step_seconds, evaluations, evaluation_seconds, final_seconds):
    """How many more steps fit in seconds_left, which must also hold `evaluations`
    evaluations (each with its sample, plot and checkpoint), the final evaluation and
    the exit. Rounded down, and with half a step to spare for the steps' own jitter: the
    run never plans to end after its budget."""
    spare = seconds_left - planned_seconds(0, step_seconds, evaluations, evaluation_seconds, final_seconds)
    return max(0, math.floor(spare / step_seconds - SPARE_STEPS))


def planned_seconds(steps, step_seconds, evaluations, evaluation_seconds, final_seconds):
    """The time that steps, evaluations, the final evaluation and the exit take."""
    return steps * step_seconds + evaluations * evaluation_seconds + final_seconds + EXIT_SECONDS


def eval_interval_for(steps, evaluations):
    """The interval that spreads at most `evaluations` evaluations over `steps` steps,
    counted back from the last of them, which always has one."""
    return max(1, math.ceil(steps / evaluations))


def evaluates_at(step, max_steps, eval_interval):
    """Whether a budgeted run evaluates after step: every eval_interval steps, counted back
    from the last step, so that when the budget moves the last step, a new interval can
    spread the evaluations still to come over the steps still to come."""
    return (max_steps - 1 - step) % eval_interval == 0


def evaluations_after(step, max_steps, eval_interval):
    """How many evaluations a budgeted run has still to come after step, the last step's among them."""
    return max(0, math.ceil((max_steps - 1 - step) / eval_interval))


def passed_evaluation(step, before, after):
    """Whether moving the last step earlier between evaluations (the Config before and
    after) brought an evaluation to step or past it: one fewer still to come. It is then due now."""
    return (evaluations_after(step, after.max_steps, after.eval_interval)
            < evaluations_after(step, before.max_steps, before.eval_interval))


def format_minutes(seconds):
    """Seconds as 12m05s, for the start-up lines and the countdown."""
    seconds = max(0, round(seconds))  # rounded first: 59.6 s is 1m00s, not 0m60s
    return f"{seconds // 60}m{seconds % 60:02d}s"
