"""
The processes of a run, and the signals that stop it.

    Processes   this process's place under torchrun: joining the others, DDP, gradient
                sync, agreeing on the loss and on stopping, sharing a decision
    Interrupt   Ctrl-C or SIGTERM: save after this step; a second one quits at once
    Quit        what a signal that ends the run at once raises
    exit_at_once    end a finished run without the interpreter's slow teardown
"""

import gc
import os
import signal
import sys
from contextlib import nullcontext

import torch

from machinery.speed import pick_device


class Processes:
    """This process's place among those torchrun started (RANK, LOCAL_RANK, WORLD_SIZE in
    its environment), or one process alone. Alone, nothing here does any work: plain
    `python train.py` runs no distributed code."""

    def __init__(self):
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.main = self.rank == 0  # the one that prints, writes log/ and saves checkpoints

    def start(self, device_name):
        """Join the other processes: gloo between CPUs; between CUDA GPUs nccl for the
        gradients, and gloo still for the small CPU tensors of agree() and share().
        Only the first process prints."""
        if not self.main:
            sys.stdout = open(os.devnull, "w")
        if self.world_size > 1:
            backend = "cpu:gloo,cuda:nccl" if pick_device(device_name).startswith("cuda") else "gloo"
            torch.distributed.init_process_group(backend=backend)

    def wrap(self, module, device):
        """module inside DistributedDataParallel, which averages the gradients of all
        processes during backward(); module itself when alone."""
        if self.world_size == 1:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [torch.device(device).index] if device.startswith(("cuda", "xpu")) else None
        return DistributedDataParallel(module, device_ids=ids)

    def sync_gradients(self, module, last_micro_step):
        """Gradients are averaged across processes once per step, on the last micro-step;
        the others only add to .grad locally (DDP's no_sync)."""
        if self.world_size == 1 or last_micro_step:
            return nullcontext()
        return module.no_sync()

    def agree(self, loss, stop):
        """(the mean of loss over processes, whether any process wants to stop): one
        all-reduce per step, so every process prints the same loss and stops at the same step."""
        if self.world_size == 1:
            return loss, stop
        both = torch.tensor([loss, float(stop)], dtype=torch.float64)
        torch.distributed.all_reduce(both)  # summed; gloo has no average
        return both[0].item() / self.world_size, both[1].item() > 0

    def share(self, value):
        """The first process's value of an int, in every process."""
        if self.world_size == 1:
            return value
        shared = torch.tensor([value], dtype=torch.int64)
        torch.distributed.broadcast(shared, src=0)
        return int(shared.item())

    def barrier(self):
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self):
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Interrupt:
    """The first Ctrl-C (SIGINT), or the SIGTERM that `timeout` and cluster schedulers send
    before they kill, asks the loop to stop after the current step and save. Alone, a
    second signal of either kind quits at once, without saving; and once the last step is
    saved (after_training), the first one does. Under torchrun further signals are
    ignored: Ctrl-C reaches torchrun too, which then sends every process a SIGTERM, and
    all processes must reach the end of the step together for the save to happen."""

    def __init__(self, alone=True):
        self.signal = None  # the signal that asked to stop, once one has
        self.alone = alone
        self.at_once = False
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    @property
    def requested(self):
        return self.signal is not None

    def stops(self, agreed):
        """Whether the loop stops after this step: as the processes agreed after it or,
        alone, also for a signal that came during its evaluation."""
        return agreed or (self.alone and self.requested)

    def exit_code(self):
        """The shell's convention for a run a signal stopped: 130 for SIGINT, 143 for
        SIGTERM; under torchrun 0, since torchrun reports any other code as a crash."""
        return 128 + self.signal if self.alone else 0

    def after_training(self):
        """From now on a signal ends the run at once: the checkpoint is already on disk.
        A signal that came during the last step ends it here."""
        self.at_once = self.alone
        if self.at_once and self.requested:
            raise Quit(self.signal)

    def handle(self, signum, frame):
        if self.alone and (self.at_once or self.requested):
            raise Quit(signum)
        if self.requested:
            return  # under torchrun: the save is already on its way
        self.signal = signum
        print(f"\n{SIGNAL_NAMES[signum]}: saving a checkpoint after this step (Ctrl-C again to quit without saving)",
              flush=True)


class Quit(BaseException):
    """Raised by a signal that ends the run at once. Not an Exception, so that no
    `except Exception` on the way can swallow it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


SIGNAL_NAMES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def exit_at_once():
    """End a run that finished. At exit the interpreter's garbage collector walks every
    object still alive, millions after torch.compile, before it frees them: gc.freeze()
    moves them all where the collector never looks. The exit is otherwise the usual one:
    the atexit callbacks run and the output is flushed."""
    gc.freeze()
    sys.exit(0)
