"""The time budget: the step count it fixes ends the run within the budget, on a fake clock
and for real, resumed runs keep it, every process hears the same decisions, and budgets
too small are refused in one line."""

import math
import random
import re
import signal

import pytest
import torch

import train
from conftest import assert_refused, budget_step_count, run_script, signal_when, start_training, train_run
from machinery import budget
from machinery.budget import EXIT_SECONDS, Clock, Costs, Steps, TimeBudget, check_fits, eval_interval_for, steps_that_fit
from machinery.cli import UsageError
from machinery.processes import Processes


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_steps_that_fit_leaves_room_for_evaluations_final_and_exit():
    # 1,700 s left: 6 evaluations of 5 s, a final one of 10 s and the exit, then 8 s steps
    assert steps_that_fit(1700, 8.0, 6, 5.0, 10.0) == math.floor((1700 - 30 - 10 - EXIT_SECONDS) / 8 - 0.5)
    assert steps_that_fit(10, 8.0, 6, 5.0, 10.0) == 0  # never negative


@pytest.mark.parametrize("steps, evaluations", [(212, 6), (7, 6), (6, 6), (5, 6), (1000, 10), (1, 3)])
def test_eval_interval_spreads_at_most_the_evaluations_asked_for(steps, evaluations):
    """Over the steps after the one the count is fixed or moved at (here -1), counted back from the last."""
    kept = TimeBudget(30, evaluations, 10, 1.0, Processes(), Clock(age=0.0), fixed_steps=(steps, eval_interval_for(steps, evaluations)))
    at = [s for s in range(steps) if kept.evaluates_after(s)]
    assert len(at) == kept.evaluations_after(-1) <= evaluations and at[-1] == steps - 1
    if steps >= 10 * evaluations:  # a real run's hundreds of steps: as many as asked
        assert len(at) == evaluations and at[0] >= kept.eval_interval - evaluations


def test_minutes_are_written_as_a_clock_would():
    assert [budget.format_minutes(s) for s in (0, 59.4, 59.6, 1799.7, -3)] == ["0m00s", "0m59s", "1m00s", "30m00s", "0m00s"]


def test_the_warmup_is_timed_whole():
    for warmup, decision in [(10, 9), (0, budget.MIN_TIMED_STEPS - 1), (1, budget.MIN_TIMED_STEPS - 1)]:
        timed = new_budget(30, FakeClock(), warmup_steps=warmup)
        assert [s for s in range(20) if timed.evaluates_after(s)] == [decision]
    resumed = new_budget(30, FakeClock(), first_step=8)  # resumed before the count was fixed: times 3 steps of its own
    assert [s for s in range(20) if resumed.evaluates_after(s)] == [8 + budget.MIN_TIMED_STEPS - 1]


def test_clock_counts_from_the_process_start():
    age = budget.process_age()
    assert 0 < age < 10 * 24 * 3600  # pytest itself has been running for a while
    clock = FakeClock()
    counted = Clock(now=clock, age=12.0)
    clock.t += 3.0
    assert counted.elapsed() == 15.0


def test_a_fixed_count_evaluates_every_interval_and_at_the_last_step():
    steps = Steps(25, 10)
    assert steps.steps() == 25 and [s for s in range(25) if steps.evaluates_after(s)] == [9, 19, 24]
    assert steps.constants() == {"max_steps": 25, "eval_interval": 10} and steps.fixed and steps.note() == ""
    for s, seconds in enumerate([30.0, 1.0, 3.0]):  # the first step compiles: the eta leaves it out
        steps.step_took(s, seconds)
    assert steps.eta(2) == "0m44s"  # 22 steps left of 2 s


# The final evaluation of the runs simulated here reads 19.5 times the tokens of a periodic one
FINAL_SHARE = 19.5


def new_budget(minutes, clock, evaluations=6, warmup_steps=10, first_step=0, fixed_steps=None, processes=None):
    """A TimeBudget on a fake clock that started at clock.t."""
    return TimeBudget(minutes, evaluations, warmup_steps, FINAL_SHARE, processes or Processes(), Clock(now=clock, age=0.0),
                      first_step, fixed_steps)


def simulate(minutes, start_up, step_seconds, evaluation_seconds):
    """A whole budgeted run on a fake clock, driven as train.py's loop drives its budget:
    step_seconds(step) is what each step takes; every evaluation takes evaluation_seconds:
    half of it the validation loss alone, a quarter its lines and sample, a quarter its
    checkpoint. Returns (the seconds the command took, the steps it took, the budget,
    the steps that evaluated after the timed one)."""
    clock = FakeClock()
    clock.t = 0.0
    timed = new_budget(minutes, clock)
    clock.t = start_up
    step, evaluated = 0, []
    while step < timed.steps():
        clock.t += step_seconds(step)
        timed.step_took(step, step_seconds(step))
        if timed.evaluates_after(step):
            clock.t += 0.75 * evaluation_seconds
            timed.evaluated(step, 0.5 * evaluation_seconds, 0.75 * evaluation_seconds)
            clock.t += 0.25 * evaluation_seconds
            timed.saved(step, 0.25 * evaluation_seconds)
            evaluated.append(step)
        step += 1
    clock.t += FINAL_SHARE * 0.5 * evaluation_seconds + EXIT_SECONDS
    assert evaluated[0] == timed.timed_steps - 1
    return clock.t, step, timed, evaluated[1:]


def assert_spread(evaluated, steps, asked=6, decision=9):
    """As many evaluations as asked, after the timed one at decision, the last at the last
    step, and none more than half as far again from the one before as an even spread puts
    them (steps that slow down by half move them earlier: 84 to 195 steps apart, not 133)."""
    gaps = [b - a for a, b in zip([decision] + evaluated, evaluated)]
    assert len(evaluated) == asked and evaluated[-1] == steps - 1, evaluated
    assert max(gaps) <= 1.5 * (steps - 1 - decision) / asked, evaluated


@pytest.mark.parametrize("minutes, start_up, step_seconds, evaluation_seconds",
                         [(30, 40.0, 7.9, 5.0), (30, 60.0, 16.0, 9.0), (120, 40.0, 7.9, 5.0), (10, 36.0, 2.5, 3.0),
                          (5, 36.0, 3.9, 4.0), (30, 5.0, 0.05, 0.2), (30, 10.0, 1.5, 1.2)])
def test_a_run_on_a_quiet_machine_ends_within_its_budget_and_uses_it(minutes, start_up, step_seconds,
                                                                     evaluation_seconds):
    """Steps and evaluations always take what the timed start measured: the run ends within
    the budget and, from 30 minutes on, no earlier than the larger of 95% of it and the
    budget less two steps."""
    took, steps, timed, evaluated = simulate(minutes, start_up, lambda step: step_seconds, evaluation_seconds)
    budget_seconds = minutes * 60
    assert took <= budget_seconds
    if minutes >= 30:
        assert took >= max(0.95 * budget_seconds, budget_seconds - 2 * step_seconds), (took, steps)
    assert steps == timed.steps() == timed.constants()["max_steps"]
    assert_spread(evaluated, steps)


@pytest.mark.parametrize("drift", [1.10, 0.90])
def test_a_machine_whose_speed_drifts_still_ends_within_the_budget(drift):
    """The speed changes by 10% a minute or so after the count was fixed (as a shared
    machine's does): the evaluations move the last step, and the run still ends within its
    30 minutes, using at least 95% of them."""
    took, steps, _, _ = simulate(30, 10.0, lambda step: 1.5 if step < 75 else 1.5 * drift, 1.2)
    assert 0.95 * 1800 <= took <= 1800, (took, steps)
    _, fixed_only, _, _ = simulate(30, 10.0, lambda step: 1.5, 1.2)
    assert (steps < fixed_only) if drift > 1 else (steps > fixed_only)


@pytest.mark.parametrize("speed", [0.65, 1.5])
def test_a_count_that_moves_far_spreads_the_evaluations_asked_for_over_it(speed):
    """The steps become a third faster, or half as slow again, after the count was fixed
    (in CI, a tiny run's count moved from 387 to 523): the run still evaluates about as
    often as asked, 6 times after the timed one, and ends within its budget."""
    took, steps, _, evaluated = simulate(30, 10.0, lambda step: 1.5 if step < 75 else 1.5 * speed, 1.2)
    assert 0.95 * 1800 <= took <= 1800, (took, steps)
    assert_spread(evaluated, steps)


@pytest.mark.parametrize("step_seconds", [
    lambda step: 1.5 if step < 1000 else 1.575,  # 5% slower after the last evaluation but one
    lambda step: 1.5 if step < 950 else 1.5 * (1 + 0.08 * min(1, (step - 950) / 150)),  # slower and slower at the end
    lambda step: 10.0 if step == 1100 else 1.5,  # one step held up by another process
])
def test_steps_that_slow_down_between_evaluations_still_end_within_the_budget(step_seconds):
    """A 30-minute run on Zen 5 planned to end at 29m59s at its last evaluation but one,
    then its last 153 steps took 2.00 s instead of 1.93: it would have ended at 30m08s.
    After every step the last step moves earlier when the run would end late."""
    took, steps, _, evaluated = simulate(30, 10.0, step_seconds, 1.2)
    assert 0.95 * 1800 <= took <= 1800, (took, steps)
    assert_spread(evaluated, steps)


def test_the_zen5_run_that_ended_at_30m08s_ends_within_its_budget():
    """That run replayed: 1.93 s steps after a 52 s start, 2.00 s for its last 153."""
    took, steps, _, evaluated = simulate(30, 52.0, lambda step: 1.93 if step < 750 else 2.00, 2.0)
    assert 0.95 * 1800 <= took <= 1800, (took, steps)
    assert_spread(evaluated, steps)


def planned_budget(step_seconds=1.5, steps_done=500):
    """A 30-minute budget that fixed 1,000 steps, evaluating every 100, planned with steps
    of 1.5 s and evaluations of 1.2 s (0.6 s the loss alone), 1,000 s in, after steps_done
    steps that took step_seconds each."""
    clock = FakeClock()
    clock.t = 0.0
    timed = new_budget(30, clock)
    timed.max_steps = timed.announced = 1000
    timed.eval_interval, timed.fixed, timed.deciding_at = 100, True, None
    timed.costs = Costs(1.5, 1.2, 0.6)
    timed.step_seconds = [step_seconds] * steps_done
    clock.t = 1000.0
    return timed


def test_between_evaluations_the_last_step_moves_only_earlier():
    at_speed = planned_budget()
    at_speed.evaluated(500, 0.6, 1.2)  # at an evaluation: as many as fit (about 530 more)
    assert at_speed.steps() > 1000
    between = planned_budget()
    between.step_took(500, 1.5)
    assert between.steps() == 1000  # between them: no later
    slower, slower_evaluated = planned_budget(2.0), planned_budget(2.0)
    slower.step_took(500, 2.0)
    slower_evaluated.evaluated(500, 0.6, 1.2)
    assert slower.steps() == slower_evaluated.steps() < 1000
    # the interval stays: the evaluations still to come move earlier with the last step (599 -> 587 at 988 steps)
    a_bit_slower = planned_budget(1.6)
    a_bit_slower.step_took(500, 1.6)
    assert a_bit_slower.eval_interval == 100 and a_bit_slower.steps() == 988
    assert [s for s in range(501, 988) if a_bit_slower.evaluates_after(s)] == [587, 687, 787, 887, 987]
    # never before the next step, which then evaluates and saves, however slow the steps
    held_up = planned_budget(1000.0)
    held_up.step_took(500, 1000.0)
    assert held_up.steps() == 502 and held_up.evaluates_after(500)


def test_a_move_between_evaluations_is_said_only_when_it_is_more_than_1_percent(capsys):
    timed = planned_budget(1.57)
    timed.step_took(500, 1.57)
    assert 990 <= timed.steps() < 1000 and capsys.readouterr().out == ""  # 1,000 still the count last said
    timed.step_seconds[-100:] = [1.6] * 100
    timed.step_took(501, 1.6)
    assert "so 989 steps instead of 1000," in capsys.readouterr().out
    timed.step_seconds[-100:] = [1.59] * 100
    timed.step_took(502, 1.59)
    assert timed.steps() == 989 and capsys.readouterr().out == ""  # between evaluations, never later
    timed.evaluated(502, 0.6, 1.2)  # an evaluation says any move
    assert re.search(r"so 99\d steps instead of 989,", capsys.readouterr().out)


def test_a_two_hour_run_whose_steps_jitter_says_few_moves(capsys):
    """Steps that jitter by 4% and slow down by 5% over a 2-hour run leave a few lines on
    the moves between evaluations (a 2-hour run on the Xeon once said 308, mostly of a
    step or two), and the run still ends within its budget."""
    jitter = random.Random(0)
    took, steps, _, _ = simulate(120, 50.0, lambda step: 1.4 * (1 + 0.05 * step / 5000) * jitter.uniform(0.96, 1.04),
                                 1.0)
    said = capsys.readouterr().out.count("steps now take")
    assert 0.95 * 7200 <= took <= 7200 and said <= 12, (took, steps, said)


@pytest.mark.parametrize("moved_to, due", [(999, False), (998, True), (990, True)])
def test_an_evaluation_the_last_step_moves_past_comes_at_once(moved_to, due):
    """1,000 steps evaluate after steps 599, 699, ... 999. Step 597 moves the last step:
    to 999 the next evaluation moves to 598; to 998 it is at 597, now; to 990, at 589,
    passed: it comes now, and the others follow the last step."""
    timed = planned_budget()
    timed.count_for = lambda step, costs, evaluations, extra_seconds=0.0: moved_to
    assert not timed.evaluates_after(597)
    timed.step_took(597, 1.5)
    assert timed.steps() == moved_to and timed.evaluates_after(597) == due


def test_a_few_slow_steps_after_the_count_is_fixed_do_not_stop_the_evaluations():
    """On Zen 4, 5 steps right after the count was fixed took 5 to 6 s instead of 4.1, and
    the last step moved after each of them: the evaluations move earlier with it, and
    the next evaluation moves it back."""
    took, steps, _, evaluated = simulate(30, 75.0, lambda step: 5.8 if 11 <= step <= 15 else 4.1, 2.5)
    assert 0.95 * 1800 <= took <= 1800, (took, steps)
    assert_spread(evaluated, steps)


def test_the_mean_step_time_leaves_out_the_first_step():
    for times, last, mean in [([30.0, 1.0, 2.0], 3, 1.5), ([30.0, 1.0, 2.0, 3.0, 4.0], 3, 3.0), ([30.0], 3, 30.0),
                              ([30.0, 1.0, 2.0, 3.0, 4.0], None, 2.5)]:  # the first step compiles
        assert budget.mean_step(times, last) == mean


def test_a_resumed_run_keeps_its_count(capsys):
    """Resumed after the count was fixed, a run goes on to the same last step, however its
    steps and evaluations go, and evaluates where the count says."""
    clock = FakeClock()
    kept = new_budget(30, clock, first_step=400, fixed_steps=(1000, 100))
    assert "the time budget fixed max_steps at 1000 when this run began: resuming keeps it" in capsys.readouterr().out
    for step in range(400, 1000):
        clock.t += 5.0  # far slower than planned
        kept.step_took(step, 5.0)
        if kept.evaluates_after(step):
            kept.evaluated(step, 1.0, 2.0)
            kept.saved(step, 1.0)
        assert kept.steps() == 1000
    assert [s for s in range(400, 1000) if kept.evaluates_after(s)] == [499, 599, 699, 799, 899, 999]
    assert kept.constants() == {"max_steps": 1000, "eval_interval": 100} and kept.summary() is None


class Sharing:
    """Two processes in one: the first's share() posts its values, the other's reads them in turn."""

    def __init__(self, main, channel):
        self.main, self.world_size, self.channel = main, 2, channel

    def share(self, value):
        if self.main:
            self.channel.append(value)
            return value
        return self.channel.pop(0)


def test_every_process_gets_the_same_decisions():
    """The first process decides from its own times; the other, whose steps take other
    times and which never evaluates, hears the same step counts and evaluations."""
    clock, channel, jitter = FakeClock(), [], random.Random(0)
    first = new_budget(30, clock, processes=Sharing(True, channel))
    other = new_budget(30, clock, processes=Sharing(False, channel))
    step, decisions = 0, []
    while step < first.steps():
        seconds = 1.5 * (1 + 0.1 * step / 1000) * jitter.uniform(0.9, 1.1)
        clock.t += seconds
        first.step_took(step, seconds)
        other.step_took(step, jitter.uniform(0.1, 9.0))
        assert first.evaluates_after(step) == other.evaluates_after(step)
        if first.evaluates_after(step):
            clock.t += 1.2
            first.evaluated(step, 0.6, 1.0)
            other.evaluated(step, 0.0, 0.0)
            first.saved(step, 0.2)
            other.saved(step, 0.0)
        assert first.steps() == other.steps()
        decisions.append(first.steps())
        step += 1
    assert not channel and len(set(decisions)) > 3  # the count moved, and the other process followed every move


def test_a_budget_that_cannot_hold_what_is_done_and_the_final_evaluation_is_refused():
    with pytest.raises(UsageError, match=r"--time_budget 1 is too short for this run: the start took 50 s and the "
                                         r"final evaluation about 20 s more; raise --time_budget to at least 2"):
        check_fits(1, elapsed=50, final_seconds=20, done="the start")
    check_fits(1, elapsed=50, final_seconds=5, done="the start")


def test_time_budget_and_max_steps_cannot_both_be_given(tmp_path):
    with pytest.raises(UsageError, match="give --time_budget or --max_steps, not both"):
        train.resolve_config({"time_budget": 5.0, "max_steps": 100})
    # a recipe's budget turned off, to run it for a number of steps
    cfg, _ = train.resolve_config({"time_budget": 0.0, "max_steps": 100, "log_dir": str(tmp_path)})
    assert cfg.max_steps == 100 and cfg.time_budget == 0
    with pytest.raises(UsageError, match="time_budget must be at least 0"):
        train.Config(time_budget=-1.0)


# ----------------------------------------------------------------------------
# The real thing, with the tiny model

@pytest.mark.slow
def test_a_budgeted_run_fixes_its_steps_and_ends_within_the_budget(tmp_path, text_file):
    r = train_run(tmp_path, text_file, "--time_budget", 0.5, "--warmup_steps", 4, "--evaluations", 3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "time budget 0.5 min: max_steps fixed after step 3" in r.stdout
    fixed = budget_step_count(r.stdout)
    planned = re.search(r"the run should end after (\d+)m(\d+)s", r.stdout)
    assert 60 * int(planned.group(1)) + int(planned.group(2)) <= 30  # the plan; the machine may be busy
    assert re.search(r"time budget 0\.5 min: \d+ steps, and the command took \d+m\d+s to this line", r.stdout)
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=False)
    assert ckpt["step"] == ckpt["train_config"]["max_steps"] == fixed > 4 and ckpt["steps_fixed"]
    log = (tmp_path / "log" / "log.txt").read_text().splitlines()
    val_steps = [int(line.split()[0]) for line in log if " val " in line]
    # the timed one, then the 3 asked for, the last at the last step, however far the count moved
    # (in CI it once moved from 387 to 523 steps)
    assert val_steps[0] == 3 and 2 <= len(val_steps) - 1 <= 3 and val_steps[-1] == fixed - 1, val_steps
    seconds = [float(line.split()[3]) for line in log]
    assert seconds == sorted(seconds) and 0 < seconds[-1]  # the last column: seconds since the start

    # resumed, it keeps the fixed step count: nothing left to do
    again = train_run(tmp_path, text_file, "--time_budget", 0.5, "--init_from", "resume")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"the time budget fixed max_steps at {fixed} when this run began: resuming keeps it" in again.stdout
    assert "no steps to take" in again.stdout


@pytest.mark.slow
def test_a_budget_too_small_for_one_step_and_the_final_evaluation_is_refused(tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--time_budget", 0.01), "--time_budget 0.01 is too short for this run")


@pytest.mark.slow
def test_time_budget_with_max_steps_is_refused(tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--time_budget", 5, "--max_steps", 10), "not both")


@pytest.mark.slow
def test_a_run_stopped_before_its_steps_were_fixed_fixes_them_when_resumed(tmp_path, text_file):
    """Ctrl-C during the timed steps saves a checkpoint whose step count is not fixed yet;
    the resumed run times its own first steps and fixes it then."""
    proc = start_training(tmp_path, text_file, tmp_path / "log", "--time_budget", 0.5, "--warmup_steps", 8)
    out = signal_when(proc, ("step    1 |", signal.SIGINT))
    assert proc.returncode == 130, out + proc.stderr.read()
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=False)
    assert not ckpt["steps_fixed"] and ckpt["step"] < 8
    again = train_run(tmp_path, text_file, "--time_budget", 0.5, "--init_from", "resume")
    assert again.returncode == 0, again.stdout + again.stderr
    fixed = budget_step_count(again.stdout)
    assert torch.load(tmp_path / "log" / "ckpt.pt", weights_only=False)["step"] == fixed


# ----------------------------------------------------------------------------
# Sizing, on faked speeds

INPUT_TOKENS = 740_718  # input's training split, in the recipes' BPE tokens


def machine(flops, clock=None):
    """tokens_per_second for size_model: a machine doing flops for every 6 x (weights + 2M)
    of a token's forward and backward (the embeddings and the output layer add about 2M),
    whose timing takes four steps of 4,096 tokens on the fake clock, when one is given,
    and stops at seconds (then, as training_speed, it says None)."""
    def tokens_per_second(rung, seconds):
        speed = flops / (6 * (rung.weights() + 2e6))
        if clock is not None:
            clock.t += min(4 * 4096 / speed, max(0.0, seconds))
            return speed if 4 * 4096 / speed <= seconds else None
        return speed
    return tokens_per_second


def size(flops, text_tokens=INPUT_TOKENS, minutes=30, clock=None, processes=None):
    clock = clock or FakeClock()
    return budget.size_model(minutes, Clock(now=clock, age=0.0), text_tokens, machine(flops, clock), processes or Processes())


def rung_index(sizing):
    return budget.LADDER.index(sizing.rung)


def test_a_slower_machine_or_a_smaller_text_never_gets_a_bigger_model():
    speeds = [1e9, 3e9, 1e10, 3e10, 1e11, 3e11, 1e12, 1e13, 1e14]
    by_speed = [rung_index(size(flops)) for flops in speeds]
    assert by_speed == sorted(by_speed) and by_speed[0] < by_speed[-1], by_speed
    texts = [30_000, 100_000, 300_000, INPUT_TOKENS, 3_000_000, 30_000_000]
    by_text = [rung_index(size(1e13, text)) for text in texts]
    assert by_text == sorted(by_text) and by_text[0] < by_text[-1], by_text
    by_minutes = [rung_index(size(1e11, minutes=minutes)) for minutes in (5, 10, 30, 120)]
    assert by_minutes == sorted(by_minutes) and by_minutes[0] < by_minutes[-1], by_minutes


def test_the_same_measurements_give_the_same_choice():
    assert size(3e10) == size(3e10)
    assert size(3e10).rung == size(3e10 * 1.01).rung  # a little noise in the timing does not cross a rung


def test_a_300_kb_text_and_input_get_different_models_in_the_same_budget():
    small, whole = size(2e11, text_tokens=300_000 // 3), size(2e11)  # about Zen 4's speed
    assert rung_index(small) < rung_index(whole)
    assert "the largest the text is large enough for" in small.measured


def test_a_machine_far_faster_than_any_measured_takes_the_ladders_end_and_says_so():
    gpu = size(1e15, text_tokens=100_000_000)
    assert gpu.rung == budget.LADDER[-1] and "the ladder's end" in gpu.measured
    on_input = size(1e15)  # input is too small for the largest rungs: they would memorise it
    assert on_input.rung.weights() <= budget.WEIGHTS_PER_TEXT_TOKEN * INPUT_TOKENS < budget.LADDER[-1].weights()


def test_the_measuring_is_counted_in_the_budget_and_capped():
    """Timing the rungs takes at most 3% of the budget or 10 s, whichever is larger (and
    at most one step more), and the tokens planned come from what is left after it."""
    for minutes, flops in [(30, 3e10), (30, 2e11), (5, 3e10), (120, 1e12)]:
        clock = FakeClock()
        clock.t = 0.0
        sizing = size(flops, minutes=minutes, clock=clock)
        cap = max(0.03 * minutes * 60, budget.MEASURE_SECONDS)
        assert 0 < clock.t <= cap, (minutes, flops, clock.t)
        speed = machine(flops)(sizing.rung, 0)
        assert sizing.tokens == int(speed * budget.TRAINING_SHARE * (minutes * 60 - cap))
    too_slow = size(1e8, clock=FakeClock())  # not even the smallest rung is timed within 3%
    assert too_slow.rung == budget.LADDER[0] and "the ladder's smallest" in too_slow.measured
    given = []
    budget.size_model(5, Clock(now=FakeClock(), age=0.0), INPUT_TOKENS,
                      lambda rung, seconds: given.append(seconds) or 1e6, Processes())
    assert given and max(given) <= budget.MEASURE_SECONDS  # 3% of 5 minutes is 9 s: at least 10 s


def test_the_first_process_sizes_and_the_others_hear_it():
    clock, channel = FakeClock(), []
    first = size(3e10, clock=clock, processes=Sharing(True, channel))
    other = size(1.0, clock=clock, processes=Sharing(False, channel))  # it times nothing: the first decides
    assert first.rung == other.rung and first.tokens == other.tokens and not channel
    assert first.constants(256, world_size=2) == other.constants(256, world_size=2)
    assert first.constants(256, world_size=2)["B"] * 256 * 2 <= first.rung.total_batch_size  # the batch divides


@pytest.mark.parametrize("passes, weights, dropout", [(6, 10.6e6, 0.0), (13, 10.6e6, 0.2), (37, 10.6e6, 0.35),
                                                      (14, 1.77e6, 0.0)])
def test_dropout_follows_how_often_a_model_reads_the_text_for_its_size(passes, weights, dropout):
    """Zen 4's 30 minutes of 6 x 384 (6 passes: dropout lost), Zen 5's (13: 0.2 won) and
    its 2 hours (37: 0.35), a Zen 3's 30 minutes of 4 x 192 (14 passes, none)."""
    assert budget.regularisation(passes, weights, INPUT_TOKENS) == dropout


@pytest.mark.slow
def test_a_sized_run_says_what_it_timed_and_chose_and_trains_it(tmp_path, text_file):
    """An 80 KB text is too small for any rung but the smallest, which a minute cannot even
    feed 3 tokens per weight; it reads the text so often for its size that it gets dropout."""
    r = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", "--time_budget", 1, "--size", "auto",
                   "--tokenizer", "bpe", "--vocab_size", 320, "--compile", "False", "--device", "cpu", "--evaluations", 2,
                   "--eval_steps", 1, "--threads", 1)
    assert r.returncode == 0, r.stdout + r.stderr
    timed, chose = [line for line in r.stdout.splitlines() if line.startswith("sized for this machine: ")]
    assert re.match(r"sized for this machine: timed 4 x 128 [\d,]+ tokens per second; the ladder's smallest", timed)
    assert "sized for this machine: 4 x 128 (0.8M weights in the blocks)" in chose and "--B 16 --dropout 0.2 --weight_decay 1" in chose
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert (ckpt["config"]["n_layer"], ckpt["config"]["n_embd"], ckpt["train_config"]["dropout"]) == (4, 128, 0.2)
    assert ckpt["train_config"]["size"] == "auto" and ckpt["train_config"]["time_budget"] == 1
    again = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", "--init_from", "resume",
                       "--time_budget", 1, "--compile", "False", "--threads", 1)
    assert again.returncode == 0 and "--size auto: resume brings the model's shape, so it is not sized" in again.stdout
