"""What the bench reads from /proc (Linux only): a process's CPU seconds and memory, and
the facts about the machine that every result records."""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far (proc(5): fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def descendants(pid: int) -> list[int]:
    """Live children, grandchildren, ... of `pid` (e.g. ferry's replayer process)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of `pid` and of each of its live descendants."""
    out = {pid: cpu_seconds(pid)}
    for child in descendants(pid):
        try:
            out[child] = cpu_seconds(child)
        except OSError:
            pass  # gone meanwhile
    return out


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return ""


def status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/PID/status, e.g. VmRSS (resident now) or VmHWM (peak resident)."""
    prefix = key.encode() + b":"
    with open(f"/proc/{pid}/status", "rb") as fh:
        for line in fh:
            if line.startswith(prefix):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat `cpu` line: user,
    nice, system, irq, softirq, steal; idle and iowait left out)."""
    with open("/proc/stat", "rb") as fh:
        fields = fh.readline().split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}/stat")


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (idle-connection runs need thousands);
    children started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_mb() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def code_version(root: str) -> str:
    """`git describe`-like id of the code under test: commit, plus "+dirty" when files
    differ from it (read-only git commands)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", root, *args], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def machine_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "mem_total_mb": mem_total_mb(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
    }
