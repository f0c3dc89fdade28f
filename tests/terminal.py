"""Run a command as a user at a terminal does: stdout and stderr on a pseudo-terminal (so isatty() is true
and progress bars are drawn), everything it wrote returned as one text, control codes included."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from pathlib import Path


def run_in_pty(args: list[str], cwd: Path, env: dict, timeout: float = 600,
               columns: int = 200) -> subprocess.CompletedProcess:
    """stdout (the merged output, CRLF line ends as a terminal gets them) and the return code;
    stdin is /dev/null, as in tests/workspace.ganpipe."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise subprocess.TimeoutExpired(args, timeout, output=b"".join(chunks))
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:  # exited, and nothing more is buffered
                break
        proc.wait(timeout=60)
    finally:
        os.close(master)
    return subprocess.CompletedProcess(args, proc.returncode, b"".join(chunks).decode(errors="replace"), "")
