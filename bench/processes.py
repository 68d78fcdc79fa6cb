"""Starting the benchmark's processes and reading their resource use from /proc."""

from __future__ import annotations

import os
import resource
import shlex
import subprocess
from contextlib import ExitStack
from pathlib import Path

from support.servers import answers
from support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
RUN_SH = ROOT / "functions" / "proxy" / "run.sh"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 1,000 slow streams need ~2,000 fds in the gateway. Children
    inherit it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def uvicorn_args(port: int, run_sh: Path = RUN_SH, app: str | None = None) -> list[str]:
    """The streaming door's python arguments, read from functions/proxy/run.sh so the bench serves the gateway
    exactly as Lambda does (its launcher, uvicorn's command line with the collector off until the app has started,
    and its flags); only the port is ours (and the host, which run.sh pins to 127.0.0.1 already). `app`: another
    ASGI app served the same way (the bench's floor relay) instead of the gateway, by `-m uvicorn` with the same
    flags (only the gateway's app turns the collector back on)."""
    text = run_sh.read_text().replace("\\\n", " ")
    line = next(line for line in text.splitlines() if line.lstrip().startswith("exec python3 "))
    words = shlex.split(line)[2:]  # after `exec python3`
    first_option = next(index for index, word in enumerate(words) if word.startswith("--"))
    launcher, args = words[:first_option], words[first_option:]
    kept: list[str] = []
    skip = False
    for word in args:
        if skip:
            skip = False
        elif word in ("--host", "--port"):
            skip = True
        elif not word.startswith(("--host=", "--port=")):
            kept.append(word)
    if app is not None:
        launcher = ["-m", "uvicorn"]
        kept[-1] = app  # the app is uvicorn's one positional argument, after the options
    return [*launcher, "--host", "127.0.0.1", "--port", str(port), *kept]


def start(stack: ExitStack, args: list[str], env: dict[str, str], ready_url: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stack.callback(process.wait, 10)
    stack.callback(process.terminate)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{args}: exited with {process.returncode}")
        return answers(ready_url, status=None)

    eventually(up, timeout=30, interval=0.05, what=f"{ready_url} up")
    return process


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process, all threads, from /proc/<pid>/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
