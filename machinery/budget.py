"""
How many steps a run takes, and after which ones it evaluates: a fixed number
(Steps), or as many as fit in the minutes a learner gives the run (TimeBudget).

    python train.py --time_budget 30   # the whole command ends within 30 minutes

The loop asks two things, steps() and evaluates_after(step), and tells what each step
and each evaluation cost: step_took, evaluated, saved. A time budget times the first
steps (the warmup, whose length is fixed in steps), the first evaluation and its
checkpoint; from those it fixes the step count, and the learning-rate schedule with it,
so that the steps left, the evaluations spread over them and the final evaluation end
within the budget, counted from the moment the process started. A machine's speed
drifts, so at each later evaluation it measures again and moves the last step if it
must, and between evaluations it moves it earlier when the steps slow down. Under
torchrun the first process decides, and the others hear its decisions through the same
calls. Everything runs on a clock that tests can replace.

With --size auto, a budget first sizes the model for itself (size_model): it times a few
steps of the shapes on LADDER, from the smallest, and takes the largest this machine can
feed enough tokens in the budget, and the text is large enough for.
"""

import math
import os
import time
from typing import NamedTuple

from machinery.cli import UsageError

MIN_TIMED_STEPS = 3  # the first step warms up, so at least two more give a typical step time
EXIT_SECONDS = 2.0  # after the final evaluation: its closing lines and the exit
SPARE_STEPS = 0.5  # left unplanned at the end: a 5-minute run planned to the second ended 2.4 s late
UNFIXED_STEPS = 10**9  # the step count until a time budget fixes it: the cosine has not begun


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


class Steps:
    """A fixed number of steps, max_steps, with an evaluation and a checkpoint after every
    eval_interval-th step and after the last."""

    fixed = True  # the step count is known: the checkpoint says so

    def __init__(self, max_steps, eval_interval):
        self.max_steps, self.eval_interval = max_steps, eval_interval
        self.step_seconds = []  # each step's time, in this process

    def steps(self):
        return self.max_steps

    def evaluates_after(self, step):
        return (step + 1) % self.eval_interval == 0 or step == self.max_steps - 1

    def step_took(self, step, seconds):
        """The loop's word on a step: it took seconds. Returns seconds, for the step's line."""
        self.step_seconds.append(seconds)
        return seconds

    def evaluated(self, step, evaluate_seconds, seconds):
        """The loop's word on the evaluation after step, before its checkpoint: the loss
        alone took evaluate_seconds, with its lines, plot and sample seconds."""

    def saved(self, step, seconds):
        """The loop's word on the checkpoint after step: writing it took seconds."""

    def eta(self, step):
        """The time left after step, for the step's line."""
        return format_minutes(mean_step(self.step_seconds) * (self.max_steps - step - 1))

    def constants(self):
        """The constants the step count stands for, as the checkpoint keeps them."""
        return {"max_steps": self.max_steps, "eval_interval": self.eval_interval}

    def note(self):
        """The start-up line's words on the step count (none for a fixed one)."""
        return ""

    def summary(self):
        """The closing line's words on the step count, or None."""
        return None


class Costs(NamedTuple):
    """What a time budget plans with, in seconds."""

    step: float  # a training step
    evaluation: float  # an evaluation with its lines, plot, sample and checkpoint
    evaluate: float  # the validation loss alone


class TimeBudget(Steps):
    """As many steps as fit in `minutes`, with `evaluations` evaluations spread over them
    after the first one, which fixes the count. final_share: the final evaluation's
    tokens over a periodic one's, so that its time follows from theirs. processes: the
    first one decides, and share() gives every process its decision. A run resumed after
    the count was fixed keeps it: fixed_steps (max_steps, eval_interval)."""

    def __init__(self, minutes, evaluations, warmup_steps, final_share, processes, clock, first_step=0,
                 fixed_steps=None):
        super().__init__(*(fixed_steps or (UNFIXED_STEPS, UNFIXED_STEPS)))
        self.minutes, self.evaluations, self.final_share = minutes, evaluations, final_share
        self.processes, self.clock, self.first_step = processes, clock, first_step
        self.fixed = fixed_steps is not None
        self.planning = not self.fixed  # this run fixes the count, and moves it; a resumed one keeps it
        self.timed_steps = max(warmup_steps, MIN_TIMED_STEPS)  # the warmup's rates do not depend on max_steps
        # a run resumed before the count was fixed times a few steps of its own
        self.deciding_at = None if self.fixed else max(self.timed_steps, first_step + MIN_TIMED_STEPS) - 1
        self.decided_at = None
        self.costs, self.save_seconds = None, 0.0
        self.announced = self.max_steps  # the count the last line said
        self.due = None  # a step whose evaluation came at once: the last step moved past it
        if self.fixed:
            print(f"the time budget fixed max_steps at {self.max_steps} when this run began: resuming keeps it")

    def evaluates_after(self, step):
        if not self.fixed:
            return step == self.deciding_at
        # counted back from the last step, so that a new interval spreads the evaluations to come over the steps to come
        return (self.max_steps - 1 - step) % self.eval_interval == 0 or step == self.due

    def step_took(self, step, seconds):
        super().step_took(step, seconds)
        if not self.fixed and step == self.first_step:
            check_fits(self.minutes, self.clock.elapsed(), 0, "start-up, compiling and the first step")
        if self.fixed and self.planning and step < self.max_steps - 1 and not self.evaluates_after(step):
            left = self.evaluations_after(step)
            costs = self.costs._replace(step=self.recent_step()) if self.processes.main else None
            self.plan(step, costs, earlier_only=True)
            if self.evaluations_after(step) < left:  # the last step moved past an evaluation: it comes now
                self.due = step
        return seconds

    def evaluated(self, step, evaluate_seconds, seconds):
        main = self.processes.main
        if not self.fixed:  # the timed evaluation: fix the count (refused here, a run leaves no checkpoint behind)
            if main:
                check_fits(self.minutes, self.clock.elapsed(), self.final_share * evaluate_seconds,
                           f"start-up, compiling, {step + 1 - self.first_step} steps and an evaluation")
                self.costs = Costs(mean_step(self.step_seconds), seconds, evaluate_seconds)
            self.fix(step)
        elif self.planning and step < self.max_steps - 1:
            if main:  # the evaluation's checkpoint is still to come: it takes what the last one took
                self.costs = Costs(self.recent_step(), seconds + self.save_seconds, evaluate_seconds)
            self.plan(step, self.costs if main else None, extra_seconds=self.save_seconds)

    def saved(self, step, seconds):
        self.save_seconds = seconds
        if self.planning and step == self.decided_at:  # the count was fixed before its checkpoint's cost was known
            costs = self.costs._replace(evaluation=self.costs.evaluation + seconds) if self.processes.main else None
            self.plan(step, costs, earlier_only=True)

    def fix(self, step):
        """Fix the count after the timed step: the first process decides and says so."""
        max_steps = 0
        if self.processes.main:
            max_steps = self.count_for(step, self.costs, self.evaluations)
            end = self.planned_end(step, max_steps, self.costs, self.evaluations)
            print(f"time budget {self.minutes:g} min: {max_steps} steps of {self.costs.step:.1f} s, {self.evaluations} "
                  f"evaluations of {self.costs.evaluation:.1f} s and a final one of about "
                  f"{self.final_share * self.costs.evaluate:.0f} s; the run should end after {format_minutes(end)}",
                  flush=True)
        self.max_steps = self.announced = self.processes.share(max_steps)
        self.eval_interval = eval_interval_for(self.max_steps - 1 - step, self.evaluations)  # over the steps after this
        self.fixed, self.deciding_at, self.decided_at = True, None, step

    def plan(self, step, costs, extra_seconds=0.0, earlier_only=False):
        """Move the last step so that the run still ends within its budget: at an
        evaluation, which measured everything again, as many steps as fit; between
        evaluations, after every step, only earlier (never before the next step, which
        then evaluates), when the steps have slowed. The first process decides from costs
        (the others pass None), and says a move made at an evaluation, or between
        evaluations one of more than 1% since the count it last said."""
        left = max(1, self.evaluations_after(step))
        max_steps = self.max_steps
        if costs is not None:
            max_steps = self.count_for(step, costs, left, extra_seconds)
            if earlier_only:
                max_steps = max(step + 2, min(max_steps, self.max_steps))
        max_steps = self.processes.share(max_steps)
        # between evaluations the interval stays, so the evaluations still to come move earlier with the last step;
        # spread again after every step, they would slide ahead of the run and never come
        if not earlier_only:
            self.eval_interval = eval_interval_for(max_steps - 1 - step, left)
        self.max_steps = max_steps
        moved = abs(max_steps - self.announced)
        if costs is not None and moved > 0 and (not earlier_only or moved > self.announced // 100):
            end = self.planned_end(step, max_steps, costs, left, extra_seconds)
            print(f"time budget {self.minutes:g} min: steps now take {costs.step:.2f} s, so {max_steps} steps "
                  f"instead of {self.announced}, evaluating every {self.eval_interval}; the run should end after "
                  f"{format_minutes(end)}", flush=True)
            self.announced = max_steps

    def count_for(self, step, costs, evaluations, extra_seconds=0.0):
        """The step count: as many steps after `step` as fit in what is left of the budget,
        with `evaluations` evaluations, the final one and extra_seconds of other work."""
        seconds_left = self.minutes * 60 - self.clock.elapsed() - extra_seconds
        return step + 1 + steps_that_fit(seconds_left, costs.step, evaluations, costs.evaluation,
                                         self.final_share * costs.evaluate)

    def planned_end(self, step, max_steps, costs, evaluations, extra_seconds=0.0):
        """When a run that goes on to max_steps should end, in seconds from the start."""
        return self.clock.elapsed() + extra_seconds + planned_seconds(
            max_steps - 1 - step, costs.step, evaluations, costs.evaluation, self.final_share * costs.evaluate)

    def evaluations_after(self, step):
        """The evaluations still to come after step, the last step's among them."""
        return max(0, math.ceil((self.max_steps - 1 - step) / self.eval_interval))

    def recent_step(self):
        """What the budget plans the next steps with: the mean of the last eval_interval."""
        return mean_step(self.step_seconds, last=self.eval_interval)

    def eta(self, step):
        if not self.planning:
            return super().eta(step)
        return format_minutes(self.minutes * 60 - self.clock.elapsed())

    def note(self):
        if self.fixed:
            return ""
        return f"time budget {self.minutes:g} min: max_steps fixed after step {self.timed_steps - 1} | "

    def summary(self):
        if not self.planning:
            return None
        return (f"time budget {self.minutes:g} min: {self.max_steps} steps, and the command took "
                f"{format_minutes(self.clock.elapsed())} to this line")


def mean_step(step_seconds, last=None):
    """The mean time of the last `last` steps (of all of them when None), leaving out the
    first step and its one-off warm-up unless it is the only one."""
    kept = step_seconds[1 if last is None else max(1, len(step_seconds) - last):] or step_seconds
    return sum(kept) / len(kept)


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


def format_minutes(seconds):
    """Seconds as 12m05s, for the start-up lines and the countdown."""
    seconds = max(0, round(seconds))  # rounded first: 59.6 s is 1m00s, not 0m60s
    return f"{seconds // 60}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------
# Sizing: the model that makes the most of this budget on this machine and this text


class Rung(NamedTuple):
    """A model shape on the ladder, with the batch that suits it (heads of 64, as GPT-2)."""

    n_layer: int
    n_embd: int
    total_batch_size: int  # tokens per step: small models learn more from more, smaller steps

    def weights(self):
        """The weights in the blocks: 4 C^2 in attention, 8 C^2 in the MLP, per block."""
        return 12 * self.n_layer * self.n_embd**2

    def flags(self):
        return {"n_layer": self.n_layer, "n_head": self.n_embd // 64, "n_embd": self.n_embd,
                "total_batch_size": self.total_batch_size}

    def __str__(self):
        return f"{self.n_layer} x {self.n_embd}"


LADDER = (Rung(4, 128, 4096), Rung(4, 192, 4096), Rung(4, 256, 4096), Rung(6, 256, 4096), Rung(6, 384, 8192),
          Rung(8, 512, 8192), Rung(12, 768, 8192))
TOKENS_PER_WEIGHT = 3.0  # a rung fits the budget when it can read this many tokens per weight in its blocks
WEIGHTS_PER_TEXT_TOKEN = 20  # and the text holds at least one token per 20 of them: more only memorise it
TRAINING_SHARE = 0.85  # of the budget left after sizing, what the steps get: the rest is compiling and evaluating
MEASURE_SHARE, MEASURE_SECONDS = 0.03, 10.0  # sizing measures for at most the larger of these (of the budget)
MICRO_BATCH = 16  # sequences per micro-batch for every rung


class Sizing(NamedTuple):
    """What the sizing chose, and why."""

    rung: Rung
    tokens: int  # the tokens the rung should read in the budget
    text_tokens: int  # the training text's
    measured: str  # what was timed, for the start-up line

    @property
    def passes(self):
        """How many times the run should read the training text."""
        return self.tokens / self.text_tokens

    def describe(self, chosen):
        """The start-up lines: what was measured, what was chosen (the constants in chosen) and why."""
        weights = f"{self.rung.weights() / 1e6:.1f}M weights in the blocks"
        flags = " ".join(f"--{name} {value:g}" for name, value in chosen.items())
        return (f"sized for this machine: timed {self.measured}\n"
                f"sized for this machine: {self.rung} ({weights}), about {self.tokens / 1e6:.1f}M tokens, "
                f"{self.passes:.0f} passes over the text; the same as {flags or 'what the flags already say'}")

    def constants(self, T, world_size=1, max_batch=MICRO_BATCH):
        """The constants the sizing owns, for this rung: the shape, the batch (divided among
        the processes, in micro-batches of at most max_batch windows), and dropout and
        weight decay from how often the run reads the text."""
        dropout = regularisation(self.passes, self.rung.weights(), self.text_tokens)
        micro_batch = max(1, min(MICRO_BATCH, self.rung.total_batch_size // (T * world_size), max_batch))
        micro_batch = 1 << (micro_batch.bit_length() - 1)  # a power of two, which divides the batch
        return {**self.rung.flags(), "B": micro_batch, "dropout": dropout, "weight_decay": 1.0 if dropout else 2.0}


def regularisation(passes, weights, text_tokens):
    """The dropout a rung needs against memorising the text: none until it reads the text
    often enough for its size (passes x weights per text token, 86 on Zen 4's 30 minutes
    of 6 x 384, where dropout 0.2 lost), 0.2 beyond 100 (184 on Zen 5's 30 minutes, where
    it won), 0.35 beyond 300 (533 on Zen 5's 2 hours)."""
    pressure = passes * weights / text_tokens
    return 0.0 if pressure < 100 else 0.2 if pressure < 300 else 0.35


def size_model(minutes, clock, text_tokens, tokens_per_second, processes):
    """Choose the rung of LADDER for a run of `minutes` on a training text of text_tokens
    tokens: the largest one whose speed on this machine (tokens_per_second(rung,
    seconds_left), which times a few steps, or None where they would not fit in
    seconds_left) reads TOKENS_PER_WEIGHT tokens per weight in what the budget leaves
    the steps, and which the text is large enough for. Rungs are timed from the smallest
    up, until one falls short or the measuring time runs out, all of it within the
    budget. The first process decides; share() tells the others."""
    measured_by = clock.elapsed() + max(MEASURE_SHARE * minutes * 60, MEASURE_SECONDS)
    seconds = TRAINING_SHARE * max(0.0, minutes * 60 - measured_by)  # what the steps get, at the least
    speeds, why = [], "the next one would read too few tokens per weight"  # tokens per second, from the smallest rung
    for rung in LADDER if processes.main else ():
        if speeds and rung.weights() > WEIGHTS_PER_TEXT_TOKEN * text_tokens:
            why = "the largest the text is large enough for"
            break
        speed = tokens_per_second(rung, measured_by - clock.elapsed())
        if speed is None:
            why = "the largest timed in the time sizing may take"
            break
        speeds.append(speed)
        if len(speeds) > 1 and speed * seconds < TOKENS_PER_WEIGHT * rung.weights():
            break
    else:
        why = "the ladder's end: this machine is faster than any the rule was fitted on"
    fits = [i for i, speed in enumerate(speeds) if speed * seconds >= TOKENS_PER_WEIGHT * LADDER[i].weights()]
    if not fits:
        why = "the ladder's smallest, though it reads fewer tokens per weight than the rule asks"
    choice = processes.share(max(fits, default=0))
    tokens = processes.share(int(speeds[choice] * seconds) if speeds else 0)
    timed = ", ".join(f"{rung} {speed:,.0f}" for rung, speed in zip(LADDER, speeds))
    return Sizing(LADDER[choice], tokens, text_tokens, f"{timed} tokens per second; {why}")
