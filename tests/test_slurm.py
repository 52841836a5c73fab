"""The demo workflow through `snakemake --profile profiles/slurm` on a real single-node Slurm.

Starts munged, slurmctld and slurmd on this machine with a configuration in a temporary folder
(Slurm 22.05 from Debian; `make test-slurm` installs it), runs the data stage and one tiny
training variant through the executor plugin, checks the outputs, and stops every daemon it
started by process id. The plugin's job step drops SLURM_CONF, so the configuration must be
/etc/slurm/slurm.conf: the test writes it there and restores whatever was there before.
There is no slurmdbd, so job states come from squeue (MinJobAge 300 keeps finished jobs visible).
Skipped, with the reason, when not root or when the Slurm or munge programs are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slurm

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
SLURM_CONF = Path("/etc/slurm/slurm.conf")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        return (f"not installed: {', '.join(missing)} "
                "(make test-slurm installs Debian's slurmctld slurmd slurm-client munge)")
    return None


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


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not happen within {timeout} s")


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(40):
            os.kill(pid, 0)
            time.sleep(0.25)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "munge"):
        (root / folder).mkdir()
    os.chmod(root / "munge", 0o755)  # munged refuses a socket folder that others cannot enter
    saved = SLURM_CONF.read_bytes() if SLURM_CONF.exists() else None
    SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SLURM_CONF.write_text(_slurm_conf(root))
    pid_files = [root / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
    socket_path = root / "munge" / "munge.socket.2"
    try:
        subprocess.run(["munged", "--force", f"--socket={socket_path}", f"--pid-file={root / 'munged.pid'}",
                        f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munge.seed'}"], check=True)
        subprocess.run(["slurmctld"], check=True)
        _wait_for(lambda: _pid(root / "slurmctld.pid") is not None, 20, "slurmctld start")
        subprocess.run(["slurmd"], check=True)
        _wait_for(lambda: _pid(root / "slurmd.pid") is not None, 20, "slurmd start")
        _wait_for(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True,
                                                   text=True).stdout, 60, "the node becoming idle")
        yield root
    finally:
        for pid_file in reversed(pid_files):  # read now: a daemon writes its pid file after it forks
            _stop(_pid(pid_file))
        if saved is None:
            SLURM_CONF.unlink(missing_ok=True)
        else:
            SLURM_CONF.write_bytes(saved)


def test_demo_through_the_slurm_profile(slurm, tmp_path):
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["run"] = "slurm"
    config["dataset"].update(name="synthetic-slurm", max_images=40)
    config["dataset"]["synthetic"].update(num_images=50)
    config["grid"]["variants"] = ["mobilenet_v3_large-cross_entropy-uniform"]
    config["train"].update(image_size=48, epochs=1)
    config["wandb"]["mode"] = "disabled"
    (tmp_path / "slurm.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "results" / "slurm"
    targets = ["results/slurm/data/manifest.csv", "results/slurm/figures/class_images.png",
               f"results/slurm/models/{config['grid']['variants'][0]}/evaluation/metrics.json"]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "--profile", str(REPO / "profiles/slurm"), "--configfile", str(tmp_path / "slurm.yaml"),
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
         "--slurm-keep-successful-logs",
         "--latency-wait", "10", *targets, "--set-threads", "select=1",
         # the profile asks more for select than this 2-CPU node has
         "--set-resources", "select:cpus_per_task=1", "select:mem_mb=2000", "extract_images:cpus_per_task=1"],
        capture_output=True, text=True, timeout=1500)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert "SLURM jobid" in log, log[-3000:]
    manifest = pd.read_csv(run / "data" / "manifest.csv")
    assert len(manifest) == 40
    assert (run / "models" / config["grid"]["variants"][0] / "best.pt").exists()
    submitted = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert submitted, "no Slurm job logs: the jobs did not go through Slurm"
