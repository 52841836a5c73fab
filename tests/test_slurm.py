"""The workflow through `snakemake --profile profiles/slurm` on a real single-node Slurm.

Starts munged, slurmctld and slurmd on this machine, in the foreground as children of the test (Slurm
22.05 from Debian; `make test-slurm` installs it), with a configuration in a temporary folder. A
daemon that exits, or logs a fatal error, while the test waits for it fails the test at once with
that daemon's own log line; the node gets a minute to become idle. Every daemon is stopped by its
process id, after any job left over is cancelled. The plugin's job step drops SLURM_CONF, so the
configuration must be /etc/slurm/slurm.conf: the test writes it there and restores whatever was
there before. There is no slurmdbd, so job states come from squeue and scontrol (MinJobAge 300
keeps finished jobs visible).

Two runs: a training job pre-empted (SIGTERM to the job, as a pre-empting scheduler sends) and
resubmitted by Snakemake's retry, which must resume and match an uninterrupted run exactly; and a
whole small study (2 variants x 2 seeds, the comparison) with its report. Their configs and targets
come from tests/slurm_study.py, which `make test` dry-runs. Skipped, with the reason, when not root
or when the Slurm or munge programs are missing.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import slurm_study
import yaml
from conftest import REPO, SNAKEMAKE

from cocoseg.checkpoint import load_checkpoint
from cocoseg.train import TIMING_COLUMNS

pytestmark = pytest.mark.slurm

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel", "scontrol")
SLURM_CONF = Path("/etc/slurm/slurm.conf")
# No slurmdbd: squeue answers; the plugin's first status check after 2 s (its interval then grows by 10 s).
THROUGH_SLURM = ["--profile", str(REPO / "profiles/slurm"), "--slurm-status-command", "squeue",
                 "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "2",
                 "--slurm-keep-successful-logs", "--latency-wait", "10",
                 "--set-threads", "select=1"]  # the profile's 4 threads for select are more than this 2-CPU node
RUN_TIMEOUT = 900
SUBMITTED = re.compile(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return (f"not installed: {', '.join(missing)} "
                "(make test-slurm installs Debian's slurmctld slurmd slurm-client munge)")
    busy = [port for port in (6817, 6818) if _listening(port)]
    if busy:
        return f"ports {busy} are taken: another Slurm runs on this machine, and this test would disturb it"
    return None


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _slurm_conf(root: Path) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""
ClusterName=cocoseg-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket.2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MinJobAge=300
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Daemon:
    """A daemon run in the foreground as a child of the test: its pid is known from the start."""

    def __init__(self, name: str, argv: list[str], logs: list[Path]) -> None:
        self.name, self.logs = name, logs
        self.output = logs[0].with_suffix(".out")
        with open(self.output, "w") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def last_error(self) -> str:
        """The daemon's own last fatal or error line (else its last line), from its log and its output."""
        lines = [line for path in (*self.logs, self.output) if path.exists()
                 for line in path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if re.search(r"fatal|error", line, re.IGNORECASE)]
        return (errors or lines or ["(nothing logged)"])[-1]

    def check(self) -> None:
        """Fail at once when the daemon has exited or logged a fatal error."""
        status = self.process.poll()
        if status is not None:
            raise RuntimeError(f"{self.name} exited with status {status}: {self.last_error()}")
        fatal = [line for path in self.logs if path.exists()
                 for line in path.read_text(errors="replace").splitlines() if "fatal" in line.lower()]
        if fatal:
            raise RuntimeError(f"{self.name} failed: {fatal[-1]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _wait_for(predicate, timeout: float, what: str, daemons: list[Daemon]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for daemon in daemons:
            daemon.check()
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen within {timeout} s; "
                       + "; ".join(f"{daemon.name}: {daemon.last_error()}" for daemon in daemons))


def _output(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def _cancel_leftover_jobs() -> None:
    """Jobs of this test's own cluster still queued or running (after a failure): cancelled, then gone."""
    jobs = _output("squeue", "-h", "-o", "%i", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING").split()
    if jobs:
        subprocess.run(["scancel", *jobs], capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _output("squeue", "-h", "-o", "%i", "--states=RUNNING,COMPLETING"):
            time.sleep(1)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _skip_reason()
    if reason and os.environ.get("COCOSEG_REQUIRE_SLURM"):  # make test-slurm (and so CI): a skip is a failure
        pytest.fail(f"the real-Slurm test cannot run: {reason}")
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "munge"):
        (root / folder).mkdir()
    os.chmod(root / "munge", 0o755)  # munged refuses a socket folder that others cannot enter
    saved = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_slurm_conf(root))
    socket_path = root / "munge" / "munge.socket.2"
    daemons: list[Daemon] = []
    try:
        daemons.append(Daemon("munged", ["munged", "--foreground", "--force", f"--socket={socket_path}",
                                         f"--pid-file={root / 'munged.pid'}", f"--log-file={root / 'munged.log'}",
                                         f"--seed-file={root / 'munge.seed'}"], [root / "munged.log"]))
        _wait_for(socket_path.exists, 20, "munged's socket", daemons)
        daemons.append(Daemon("slurmctld", ["slurmctld", "-D"], [root / "slurmctld.log"]))
        _wait_for(lambda: "is UP" in _output("scontrol", "ping"), 30, "slurmctld answering", daemons)
        daemons.append(Daemon("slurmd", ["slurmd", "-D"], [root / "slurmd.log"]))
        _wait_for(lambda: "idle" in _output("sinfo", "-h", "-o", "%T"), 60, "the node becoming idle", daemons)
        yield root
    finally:
        _shut_down(daemons, saved)


def _shut_down(daemons: list[Daemon], saved_conf: bytes | None) -> None:
    """Leftover jobs cancelled, every daemon stopped by its pid, slurm.conf restored: each step runs even when
    one before it fails (the first failure is raised at the end)."""
    steps = [_cancel_leftover_jobs] if any(d.name == "slurmd" and d.process.poll() is None for d in daemons) else []
    steps += [daemon.stop for daemon in reversed(daemons)]
    steps.append(lambda: SLURM_CONF.unlink(missing_ok=True) if saved_conf is None
                 else SLURM_CONF.write_bytes(saved_conf))
    failures = []
    for step in steps:
        try:
            step()
        except Exception as failure:  # the remaining steps must still run
            failures.append(failure)
    if failures:
        raise failures[0]


def write_config(root: Path, config: dict) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return ["--directory", str(root), "--configfile", str(root / "config.yaml")]


def snakemake(*args: str) -> str:
    result = subprocess.run([*SNAKEMAKE, *args], cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    return log


def job_state(job_id: str) -> dict[str, str]:
    """``scontrol show job``'s fields (JobState, ExitCode, ...) of a job that Slurm still remembers."""
    return dict(re.findall(r"(\w+)=(\S*)", _output("scontrol", "show", "job", job_id)))


def submitted_jobs(log: str, rule: str) -> list[tuple[str, Path]]:
    """(Slurm job id, Slurm log) of every job of ``rule`` that Snakemake submitted, in order."""
    return [(job_id, Path(path)) for job_id, path in SUBMITTED.findall(log) if f"/rule_{rule}/" in path]


def metrics(model: Path) -> pd.DataFrame:
    return pd.read_csv(model / "metrics.csv").drop(columns=list(TIMING_COLUMNS))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The pre-empted run's config trained on this machine without Slurm and without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    config = slurm_study.preemption_config()
    snakemake(*slurm_study.preemption_targets(config), "--cores", "2", *write_config(root, config))
    return root / slurm_study.run_folder(config, slurm_study.VARIANTS[0], 0)


def preempt_when_checkpointed(process: subprocess.Popen, log: Path, last: Path) -> str:
    """Once the training job has saved ``last.pt``, SIGTERM the job (all its steps); returns its job id."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"snakemake ended before the pre-emption:\n{log.read_text()[-6000:]}")
        jobs = submitted_jobs(log.read_text(), "train")
        if jobs and last.exists():
            subprocess.run(["scancel", "--signal=TERM", jobs[0][0]], check=True, timeout=30)
            return jobs[0][0]
        time.sleep(0.2)
    raise AssertionError(f"no last.pt within {RUN_TIMEOUT} s:\n{log.read_text()[-6000:]}")


def wait_for_end(job_id: str) -> dict[str, str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state.get("JobState") not in (None, "PENDING", "RUNNING", "COMPLETING"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not end within 120 s of its SIGTERM: {job_state(job_id)}")


def test_preempted_training_job_is_resubmitted_and_resumes_exactly(slurm, uninterrupted, tmp_path):
    config = slurm_study.preemption_config()
    args = write_config(tmp_path, config)
    targets = slurm_study.preemption_targets(config)
    model = tmp_path / slurm_study.run_folder(config, slurm_study.VARIANTS[0], 0)
    # The data on this machine, then the training job through Slurm.
    snakemake(*targets, "--cores", "2", "--until", "cache", *args)
    log = tmp_path / "snakemake.log"
    with open(log, "w") as out:
        process = subprocess.Popen([*SNAKEMAKE, *targets, *THROUGH_SLURM, *args], cwd=REPO, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        first = preempt_when_checkpointed(process, log, model / "checkpoints" / "last.pt")
        first_state = wait_for_end(first)
        process.wait(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)  # Snakemake cancels its Slurm jobs on the way out
            process.wait(timeout=60)
    text = log.read_text()
    assert process.returncode == 0, text[-6000:]
    jobs = submitted_jobs(text, "train")
    assert [job_id for job_id, _ in jobs][:1] == [first] and len(jobs) == 2, jobs
    second_state = job_state(jobs[1][0])
    # The first attempt's output is in its Slurm log: the retry starts the training log afresh.
    first_log = jobs[0][1].read_text()
    training_log = (tmp_path / f"results/{config['run']}/logs/train_{slurm_study.VARIANTS[0]}_seed0.log").read_text()
    saved = re.search(r"SIGTERM: saved \S+ at epoch (\d+) step (\d+)", first_log)
    resumed = re.search(r"resuming \S+ from \S+: epoch (\d+), step (\d+)", training_log)
    print(f"\npre-empted attempt: Slurm job {first}, JobState={first_state.get('JobState')} "
          f"ExitCode={first_state.get('ExitCode')}; {saved.group(0) if saved else 'no SIGTERM line'}")
    print(f"retry: Slurm job {jobs[1][0]}, JobState={second_state.get('JobState')} "
          f"ExitCode={second_state.get('ExitCode')}; {resumed.group(0) if resumed else 'no resume line'}")
    # The interruption happened: the first attempt failed, its training saved on SIGTERM and exited 143.
    assert first_state.get("JobState") == "FAILED" and first_state.get("ExitCode") != "0:0", first_state
    assert saved and "returned non-zero exit status 143" in first_log, first_log[-3000:]
    assert second_state.get("JobState") == "COMPLETED" and second_state.get("ExitCode") == "0:0", second_state
    assert resumed and resumed.groups() == saved.groups(), (saved, resumed)
    assert load_checkpoint(model / "checkpoints" / "last.pt")["epoch"] == config["train"]["epochs"]
    pd.testing.assert_frame_equal(metrics(model), metrics(uninterrupted))
    assert len(metrics(model)) == config["train"]["epochs"]


def embedded(html: str, name: str) -> str:
    """The result file ``name`` (a path's end) as the report embeds it: its base64 data URI, decoded."""
    found = re.search(r'"[^"]*/' + re.escape(name) + r'": \{.*?"data_uri": "data:[^"]*?base64,([A-Za-z0-9+/=]+)"',
                      html, re.DOTALL)
    assert found, f"{name} is not in the report"
    return base64.b64decode(found.group(1)).decode("utf-8")


def test_small_study_through_the_profile_and_its_report(slurm, tmp_path):
    config = slurm_study.study_config()
    args = write_config(tmp_path, config)
    targets = slurm_study.study_targets(config)
    started = time.monotonic()
    log = snakemake(*targets, *THROUGH_SLURM, *args)
    print(f"\nthe study through Slurm: {time.monotonic() - started:.0f} s, "
          f"{len(SUBMITTED.findall(log))} Slurm jobs")
    run = tmp_path / "results" / config["run"]
    assert len(pd.read_csv(run / "data" / "manifest.csv")) == config["dataset"]["max_images"]
    variants, seeds = config["grid"]["variants"], config["grid"]["seeds"]
    for rule, count in (("train", len(variants) * len(seeds)), ("evaluate", len(variants) * len(seeds)),
                        ("select", 1), ("compare", 1)):
        assert len(submitted_jobs(log, rule)) == count, (rule, log[-3000:])
    for variant in variants:
        for seed in seeds:
            assert (tmp_path / slurm_study.run_folder(config, variant, seed) / "evaluation/metrics.json").exists()
    assert sorted(pd.read_csv(run / "tables" / "comparison.csv")["variant"]) == sorted(variants)
    report = tmp_path / "report.html"
    snakemake(*targets, *args, "--report", str(report))
    table = embedded(report.read_text(), "tables/comparison.html")
    assert "<table" in table and all(variant in table for variant in variants), table[:3000]
