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
import os, signal, sys
import pytest
import torch
from cocoseg.lifecycle import loader_workers, started_workers

if __name__ == "__main__":
    options = loader_workers(1)
    if sys.argv[1] == "bare":
        options["worker_init_fn"] = None  # the control: a worker that keeps SIGTERM's default
    loader = torch.utils.data.DataLoader([torch.zeros(8)] * 64, batch_size=2, **options)
    batches = started_workers(loader) if sys.argv[1] != "bare" else iter(loader)
    first = next(batches)
    for worker in batches._workers:
        os.kill(worker.pid, signal.SIGTERM)  # Slurm signals every process of the job
    print(len(first) + sum(len(batch) for batch in batches))
"""


@pytest.mark.slow
def test_loader_workers_leave_sigterm_to_the_main_process(tmp_path):
    """Slurm's SIGTERM reaches the DataLoader workers too: they ignore it, and the main process, which saves
    last.pt and exits 143, keeps its batches. A worker that died of it would end the job with "DataLoader
    worker killed" instead."""
    kept = run_script(tmp_path, SIGTERM_TO_A_WORKING_WORKER, "ignoring")
    assert kept.returncode == 0 and kept.stdout.split() == ["64"], kept.stderr[-2000:]
    bare = run_script(tmp_path, SIGTERM_TO_A_WORKING_WORKER, "bare")
    assert bare.returncode != 0 and "DataLoader worker" in bare.stderr, bare.stderr[-2000:]


NOT_RERUN_IN_THE_RANKS = """
import contextlib, sys, time
from cocoseg import lifecycle

if __name__ == "__mp_main__":  # this script re-run in a spawned rank, as a rule script would be
    raise NameError("name 'snakemake' is not defined")  # only the preamble of Snakemake's copy defines it

if __name__ == "__main__":
    if sys.argv[1] == "shown":
        lifecycle.main_script_hidden = contextlib.nullcontext  # the control
    lifecycle.launch(2, time.sleep, (0,), {})
    print("ranks done")
"""


@pytest.mark.slow
def test_spawned_ranks_do_not_rerun_the_main_script(tmp_path):
    """Spawned ranks import the parent's ``__main__`` first; under Snakemake that is the rule script, which
    fails outside Snakemake's copy (and would start the job over if it did not)."""
    hidden = run_script(tmp_path, NOT_RERUN_IN_THE_RANKS, "hidden")
    assert hidden.returncode == 0 and hidden.stdout.split() == ["ranks", "done"], hidden.stderr[-2000:]
    shown = run_script(tmp_path, NOT_RERUN_IN_THE_RANKS, "shown")
    assert shown.returncode != 0 and "name 'snakemake' is not defined" in shown.stderr, shown.stderr[-2000:]

