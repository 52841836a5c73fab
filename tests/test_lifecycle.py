"""The process layer's mechanisms, each against the failure it exists for (a control without it where one can run).

Elsewhere: the SIGTERM-blocked worker start and the exit reaper in test_device.py, the whole job's
SIGTERM with loader workers and with two ranks in test_train.py, a SIGTERM to ranks that have no
handler yet (the 143 mapping) in test_train.py, GPU claims in test_gpu_slots.py.
"""

import pytest
import torch
from conftest import run_script

from cocoseg import lifecycle
from cocoseg.lifecycle import CHECK_EVERY, Ranks, StopRequest


def test_ranks_stop_together_and_read_the_flag_only_every_check_every_steps(monkeypatch):
    """Ranks see a job's SIGTERM at different steps; one that stopped alone would leave the others waiting in
    DistributedDataParallel's all-reduce. So the flag is max-reduced over the ranks, and, as each read waits
    for the device, only every CHECK_EVERY steps. One process reads its own flag at every step."""
    reads = []

    def other_rank_signalled(tensor, ranks, op):
        reads.append(op)
        return tensor.fill_(1.0)  # the max over the ranks: another rank saw SIGTERM

    monkeypatch.setattr(lifecycle, "all_reduce", other_rank_signalled)
    stop = StopRequest()  # this rank saw nothing itself
    steps = range(2 * CHECK_EVERY + 1)
    assert [step for step in steps if stop.seen(step, Ranks(0, 2), torch.device("cpu"))] == [0, CHECK_EVERY,
                                                                                             2 * CHECK_EVERY]
    assert reads == ["max"] * 3
    assert not any(stop.seen(step, Ranks(), torch.device("cpu")) for step in steps)
    stop()  # the handler
    assert stop.seen(1, Ranks(), torch.device("cpu")) and reads == ["max"] * 3


def test_preemptible_installs_the_stop_request_and_restores_the_handler():
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    with lifecycle.preemptible() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signalled
    assert signal.getsignal(signal.SIGTERM) == before


SIGTERM_TO_A_WORKING_WORKER = """
import os, subprocess, sys, time
import torch
from cocoseg.lifecycle import loader_workers, started_workers

# Slurm's SIGTERM comes from another process: torch's workers exit quietly on one from their own main process
# (the loader's shutdown).
SIGTERM_FROM_ANOTHER_PROCESS = "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGTERM)"

class Items(torch.utils.data.Dataset):
    def __init__(self, at_work):
        self.at_work = at_work

    def __len__(self):
        return 64

    def __getitem__(self, index):
        if index == 2:  # in the second batch, loaded while the first is taken
            os.write(self.at_work, b"!")
            time.sleep(0.2)  # the signal finds the worker at work here, not inside the loader's own code
        return torch.zeros(8)

def batches_after_sigterm_to_a_working_worker(options, start):
    at_work, tells = os.pipe()
    batches = start(torch.utils.data.DataLoader(Items(tells), batch_size=2, **options))
    os.close(tells)  # the worker's now: a worker that died before it wrote leaves an end of file
    first = next(batches)
    os.read(at_work, 1)
    for worker in batches._workers:  # Slurm signals every process of the job
        subprocess.run([sys.executable, "-c", SIGTERM_FROM_ANOTHER_PROCESS, str(worker.pid)], check=True)
    return len(first) + sum(len(batch) for batch in batches)

if __name__ == "__main__":
    print(batches_after_sigterm_to_a_working_worker(loader_workers(1), started_workers), flush=True)
    bare = {**loader_workers(1), "worker_init_fn": None}  # the control: a worker that keeps SIGTERM's default
    try:
        print(batches_after_sigterm_to_a_working_worker(bare, iter))
    except Exception as failed:
        print("control:", failed)
"""


@pytest.mark.slow
def test_loader_workers_leave_sigterm_to_the_main_process(tmp_path):
    """Slurm's SIGTERM reaches the DataLoader workers too: they ignore it, and the main process, which saves
    last.pt and exits 143, keeps its batches. A worker that died of it would end the job with "DataLoader
    worker killed" instead (the control, in the same process)."""
    job = run_script(tmp_path, SIGTERM_TO_A_WORKING_WORKER)
    assert job.returncode == 0, job.stderr[-2000:]
    kept, bare = job.stdout.splitlines()
    assert kept == "64"
    assert bare.startswith("control:") and "DataLoader worker" in bare, bare


NOT_RERUN_IN_THE_RANKS = """
if __name__ == "__mp_main__":  # this script re-run in a spawned rank, as a rule script would be
    raise NameError("name 'snakemake' is not defined")  # only the preamble of Snakemake's copy defines it

import contextlib, time
from cocoseg import lifecycle

if __name__ == "__main__":
    lifecycle.launch(2, time.sleep, (0,), {})
    print("ranks done", flush=True)
    lifecycle.main_script_hidden = contextlib.nullcontext  # the control
    try:
        lifecycle.launch(2, time.sleep, (0,), {})
    except Exception as failed:
        print("control:", type(failed).__name__)
"""


@pytest.mark.slow
def test_spawned_ranks_do_not_rerun_the_main_script(tmp_path):
    """Spawned ranks import the parent's ``__main__`` first; under Snakemake that is the rule script, which
    fails outside Snakemake's copy (and would start the job over if it did not): the control, with the script
    shown to them, fails so."""
    job = run_script(tmp_path, NOT_RERUN_IN_THE_RANKS)
    assert job.returncode == 0, job.stderr[-2000:]
    assert job.stdout.splitlines() == ["ranks done", "control: ProcessExitedException"], job.stderr[-2000:]
    # Only the control's ranks could print it: had the first launch's failed, it would have raised.
    assert "name 'snakemake' is not defined" in job.stderr, job.stderr[-2000:]
