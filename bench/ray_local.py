"""A private one-node Ray cluster on 127.0.0.1 for benchmarks and tests: started in its own temporary
folder, stopped by pid (exactly its processes: those whose command line names that folder, and their
descendants). `ray stop --force` would stop every Ray cluster on the machine; `stop_all` adds it,
for a machine that runs nothing else.

    address = start_ray_retrying(temp_dir, env, num_cpus=2, num_gpus=0)
    ...
    stop_ray(temp_dir, env)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_CLI = [sys.executable, "-c", "from ray.scripts.scripts import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_command(temp_dir: str, port: int, num_cpus: int = 2, num_gpus: int = 0) -> list[str]:
    return [
        *RAY_CLI, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}", f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
        "--object-store-memory=100000000",
    ]  # fmt: skip


def start_ray(
    temp_dir: str,
    env: dict,
    *,
    num_cpus: int = 2,
    num_gpus: int = 0,
    wrap: Callable[[list[str]], list[str]] | None = None,
) -> str:
    """Start a one-node Ray head whose files live in `temp_dir`; its address. `wrap` may turn the
    start command into another one (the tests run it in its own mount namespace)."""
    port = free_port()
    command = start_command(temp_dir, port, num_cpus, num_gpus)
    if wrap is not None:
        command = wrap(command)
    out = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"ray start exited {out.returncode}:\n{(out.stdout + out.stderr)[-3000:]}")
    return f"127.0.0.1:{port}"


def add_node(address: str, env: dict, *, num_cpus: int = 1, num_gpus: int = 0) -> None:
    """Join one more node to the cluster at `address`, on this machine (a second raylet: a two-node cluster
    for tests). It lives in the head's session folder, so `stop_ray(head's temp_dir)` stops it too."""
    command = [
        *RAY_CLI, "start", f"--address={address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        f"--num-gpus={num_gpus}", "--disable-usage-stats",
    ]  # fmt: skip
    out = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(f"ray start --address exited {out.returncode}:\n{(out.stdout + out.stderr)[-3000:]}")


def start_ray_retrying(temp_dir: str, env: dict, **kwargs) -> str:
    """start_ray, tried a second time (after stopping what the first try left) when a loaded machine
    makes Ray's start-up time out."""
    try:
        return start_ray(temp_dir, env, **kwargs)
    except RuntimeError as e:
        print(f"ray: start failed, retrying once: {str(e).splitlines()[-1]}", flush=True)
        stop_ray(temp_dir, env)
    return start_ray(temp_dir, env, **kwargs)


def _names(arg: str, temp_dir: str) -> bool:
    """Whether one command-line argument names `temp_dir` (or a path inside it), e.g. --log_dir=TEMP/..."""
    return any(part == temp_dir or part.startswith(temp_dir + "/") for part in arg.split("="))


def _processes() -> dict[int, tuple[int, str, list[str]]]:
    """pid → (parent pid, state, command line) of every process, from /proc (Linux)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        out[int(entry)] = (int(stat[1]), stat[0], [a.decode(errors="replace") for a in args if a])
    return out


def ray_processes(temp_dir: str) -> list[int]:
    """The live processes of the cluster started in `temp_dir`: those whose command line names it, and
    their descendants (Ray's workers rename themselves `ray::...` but are children of its raylet)."""
    table = _processes()
    found = {pid for pid, (_, state, args) in table.items() if state != "Z" and any(_names(a, temp_dir) for a in args)}
    grew = True
    while grew:
        more = {pid for pid, (ppid, state, _) in table.items() if ppid in found and state != "Z"} - found
        found |= more
        grew = bool(more)
    found.discard(os.getpid())
    return sorted(found)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def stop_ray(temp_dir: str, env: dict, stop_all: bool = False, quiet: bool = False, grace_s: float = 5.0) -> int:
    """Stop the cluster of `temp_dir` by pid: SIGTERM, then SIGKILL to what is left of it after `grace_s`.
    Returns how many of its processes are still alive (0: all gone)."""
    pids = ray_processes(temp_dir)
    _signal(pids, signal.SIGTERM)
    deadline = time.time() + grace_s
    while ray_processes(temp_dir) and time.time() < deadline:
        time.sleep(0.5)
    _signal(ray_processes(temp_dir), signal.SIGKILL)  # listed again: only processes still of this cluster
    deadline = time.time() + 10
    while ray_processes(temp_dir) and time.time() < deadline:
        time.sleep(0.5)
    if stop_all:
        subprocess.run([*RAY_CLI, "stop", "--force"], check=False, env=env, capture_output=True, timeout=120)
    left = ray_processes(temp_dir)
    if not quiet:
        print(f"ray: stopped the cluster in {temp_dir} ({len(pids)} processes); {len(left)} left", flush=True)
    return len(left)
