"""A real one-node SLURM cluster for tests, from the Debian packages (slurmctld, slurmd, munge; `make cluster-test`
installs them): munged, slurmctld and slurmd run as background processes owned by the test, with every state, spool,
log and socket file in a scratch folder, no cgroups and no accounting (see ../shared/docs/cluster.md)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
REQUIRE_ENV = "QLORA_REQUIRE_SLURM"  # set (by .ci/run and `make cluster-test`): a missing SLURM fails, not skips


def missing_tools() -> list[str]:
    """The SLURM and munge programs not found on PATH (or in /usr/sbin)."""
    return [tool for tool in DAEMONS if not _tool(tool)]


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def _conf(scratch: Path, host: str, munge_socket: Path) -> str:
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 20 * 0.9)
    cpus = os.cpu_count() or 1
    return f"""ClusterName=qlora-test
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket},cred_expire=5
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmctldPort=16817
SlurmdPort=16818
StateSaveLocation={scratch}/state
SlurmdSpoolDir={scratch}/spool
SlurmctldPidFile={scratch}/slurmctld.pid
SlurmdPidFile={scratch}/slurmd.pid
SlurmctldLogFile={scratch}/slurmctld.log
SlurmdLogFile={scratch}/slurmd.log
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def local_slurm(scratch: Path) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd in `scratch`; yield the environment that points SLURM's commands at them
    (SLURM_CONF); stop every daemon on exit."""
    scratch = Path(scratch)
    for sub in ("state", "spool", "munge"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    munge_socket = scratch / "munge" / "munge.socket"
    key = scratch / "munge" / "munge.key"
    subprocess.run([_tool("mungekey"), "--create", f"--keyfile={key}", "--force"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    conf = scratch / "slurm.conf"
    conf.write_text(_conf(scratch, host, munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([_tool("munged"), "--force", f"--socket={munge_socket}", f"--key-file={key}",
                        f"--pid-file={scratch / 'munge' / 'munged.pid'}", f"--log-file={scratch / 'munge' / 'log'}",
                        f"--seed-file={scratch / 'munge' / 'seed'}"], check=True, capture_output=True)
        for daemon in ("slurmctld", "slurmd"):
            log = open(scratch / f"{daemon}.out", "wb")
            processes.append(subprocess.Popen([_tool(daemon), "-D", "-f", str(conf)], env=env, stdout=log,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run([_tool("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True, text=True)
            if state.stdout.strip() == "idle":
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the test cluster did not come up: sinfo says {state.stdout.strip() or state.stderr}"
                               f"; see {scratch}/slurmctld.log and slurmd.log")
        yield env
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        pid_file = scratch / "munge" / "munged.pid"
        if pid_file.is_file():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().strip()), 15)
