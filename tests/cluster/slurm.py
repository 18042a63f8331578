"""A real single-node Slurm cluster in a temporary directory, for the cluster tests.

`SlurmCluster` writes a slurm.conf (no cgroups: proctrack/linuxproc, task/none; a fake GRES
`gpu` backed by empty files so `--gres=gpu:N` can be requested and Slurm sets
CUDA_VISIBLE_DEVICES), creates a munge key, and starts munged, slurmctld and slurmd as child
processes with every state, spool, log, pid file and socket under that directory and ports
chosen free. The clients (sbatch, squeue, scancel, scontrol) find it through SLURM_CONF in
`env`. `stop()` ends every process it started, by pid.

Debian's slurm-wlm and munge are installed with apt-get when missing and we are root;
`slurm_unavailable()` says why a cluster cannot be had here, for a skip reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")


class SlurmError(RuntimeError):
    """The test cluster could not be started or a Slurm command failed; the message names the log."""


def _missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def ensure_installed(timeout_s: float = 600.0) -> None:
    """apt-get install slurm-wlm munge when a binary is missing (root only)."""
    if not _missing():
        return
    if os.geteuid() != 0:
        raise SlurmError(
            f"Slurm is not installed ({', '.join(_missing())} missing) and we are not root to install it"
        )
    if shutil.which("apt-get") is None:
        raise SlurmError("Slurm is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurm-wlm", "munge"],
    ):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    if _missing():
        raise SlurmError(f"after apt-get install still missing: {', '.join(_missing())}")


def slurm_unavailable() -> str | None:
    """None when a test cluster can be started here; else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "a test Slurm cluster runs its daemons as root (SlurmUser=root); not root here"
    try:
        ensure_installed()
    except (SlurmError, subprocess.TimeoutExpired, OSError) as exc:
        return f"Slurm cannot be installed here: {exc}"
    return None


def _which(name: str) -> str:
    found = shutil.which(name) or (str(Path("/usr/sbin", name)) if Path("/usr/sbin", name).exists() else None)
    if found is None:
        raise SlurmError(f"{name} not found")
    return found


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class SlurmCluster:
    """One controller and one compute node (this host) with `gpus` fake GPUs."""

    def __init__(self, root: Path, *, gpus: int = 2, cpus: int | None = None, kill_wait_s: int = 30) -> None:
        self.root = root
        self.gpus = gpus
        self.cpus = cpus or os.cpu_count() or 1
        self.kill_wait_s = kill_wait_s
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm clients (and what jobs inherit from sbatch)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # ------------------------------------------------------------------ start / stop

    def start(self, timeout_s: float = 60.0) -> "SlurmCluster":
        try:
            self._write_files()
            self._start_munge()
            self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)])
            self._wait_for(
                lambda: self._ok(["scontrol", "ping"], "UP"), timeout_s, "slurmctld to answer ping"
            )
            self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
            self._wait_for(self._node_idle, timeout_s, f"node {self.node} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Cancel what is left, then end slurmd, slurmctld and munged (started here, by pid)."""
        if "slurmctld" in self._procs and self._procs["slurmctld"].poll() is None:
            with contextlib.suppress(Exception):
                subprocess.run(
                    [_which("scancel"), "--full", "--user", str(os.getuid())],
                    env=self.env,
                    capture_output=True,
                    timeout=10,
                )
                self._wait_for(lambda: not self.queue(), self.kill_wait_s + 15, "jobs to end", raise_=False)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [_which(args[0]), *args[1:]]
        proc = subprocess.run(
            cmd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise SlurmError(
                f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n{self.logs_tail()}"
            )
        return proc

    def sbatch(self, args: Sequence[str], *, env: Mapping[str, str] | None = None) -> str:
        """Submit; returns the job id."""
        out = self.run(["sbatch", "--parsable", *args], env=env).stdout.strip()
        return out.split(";")[0]

    def queue(self) -> dict[str, str]:
        """{job id: state} of every job slurmctld still knows as pending or running."""
        proc = self.run(["squeue", "--noheader", "--format=%i %T"], check=False)
        jobs = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                jobs[parts[0]] = parts[1]
        return jobs

    def job_state(self, job_id: str) -> str | None:
        proc = self.run(["scontrol", "show", "job", job_id], check=False)
        for word in proc.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return None

    def wait_state(self, job_id: str, states: set[str], timeout_s: float) -> str:
        last: list[str | None] = [None]

        def reached() -> bool:
            last[0] = self.job_state(job_id)
            return last[0] in states

        self._wait_for(reached, timeout_s, f"job {job_id} to be {'/'.join(sorted(states))} (last: {last[0]})")
        return str(last[0])

    def logs_tail(self, n: int = 30) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / "log" / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-n:]
                parts.append(f"--- {path} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    def _write_files(self) -> None:
        for sub in ("etc", "munge", "log", "run", "state", "spool", "dev"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / sub, 0o700 if sub == "munge" else 0o755)
        os.chmod(self.root, 0o755)
        # Copies of /dev/null stand in for /dev/nvidia*: Slurm wants character devices in
        # gres.conf, nothing opens them (task/none), and it exports CUDA_VISIBLE_DEVICES for
        # the ones a job gets. Where mknod is refused, /dev/null itself backs every GPU.
        gpu_files = []
        for i in range(self.gpus):
            f = self.root / "dev" / f"nvidia{i}"
            try:
                if not f.exists():
                    os.mknod(f, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
                gpu_files.append(str(f))
            except OSError:
                gpu_files.append("/dev/null")
        ctld_port, slurmd_port = _free_ports(2)
        r = self.root
        lines = [
            "ClusterName=dgxmusictest",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/run/slurmctld.pid",
            f"SlurmdPidFile={r}/run/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait_s}",
            "MinJobAge=300",
            "InactiveLimit=0",
            "SlurmdTimeout=60",
            "GresTypes=gpu",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 "
            f"CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory=1024 "
            f"Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP "
            "OverSubscribe=FORCE:4",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        files = ",".join(gpu_files)
        (self.conf.parent / "gres.conf").write_text(f"NodeName={self.node} Name=gpu File={files}\n")
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)

    def _start_munge(self) -> None:
        m = self.root / "munge"
        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={m / 'munge.key'}",
                f"--pid-file={m / 'munged.pid'}",
                f"--seed-file={m / 'munged.seed'}",
                f"--log-file={self.root / 'log' / 'munged.log'}",
            ],
        )
        self._wait_for(self.munge_socket.exists, 20, "munged's socket")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.stderr", "wb")  # noqa: SIM115 (kept open for the child)
        self._procs[name] = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()

    def _ok(self, args: Sequence[str], needle: str) -> bool:
        return needle in self.run(args, check=False, timeout=10).stdout

    def _node_idle(self) -> bool:
        out = self.run(["scontrol", "show", "node", self.node], check=False, timeout=10).stdout
        return "State=IDLE" in out

    def _wait_for(
        self, cond: "callable[[], bool]", timeout_s: float, what: str, *, raise_: bool = True
    ) -> bool:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(
                        f"{name} exited ({proc.returncode}) while waiting for {what}\n"
                        f"{(self.root / 'log' / (name + '.stderr')).read_text(errors='replace')[-2000:]}\n"
                        f"{self.logs_tail()}"
                    )
            if cond():
                return True
            time.sleep(0.2)
        if raise_:
            raise SlurmError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.logs_tail()}")
        return False


@contextlib.contextmanager
def slurm_cluster(root: Path, **kwargs: object) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(root, **kwargs)  # type: ignore[arg-type]
    with cluster:
        yield cluster
