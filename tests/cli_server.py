"""A warm `lmforge` for the docs' command blocks: one process imports torch, torch._dynamo, transformers and
matplotlib once, then forks a child per command, which runs `lmforge.cli.main` with the caller's arguments, folder,
environment and standard streams. The docs run dozens of commands that each spent 2-5 s importing those; the
commands themselves run unchanged, and their exit codes, output and signals are the real ones.

`python tests/cli_server.py SOCKET BIN` serves on the Unix socket SOCKET and writes BIN/lmforge, a stand-in that
forwards its command there (put BIN first on PATH). Each child is forked from a process that has run nothing, so
every command starts from the state a fresh `lmforge` would have."""

import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

STAND_IN = """#!{python} -IS
import json, os, signal, socket, sys

server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
server.connect({socket_path!r})
request = {{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}
socket.send_fds(server, [json.dumps(request).encode()], [0, 1, 2])


def reply():
    line = server.recv(64)
    if not line:
        sys.exit("lmforge (tests' stand-in): the warm server closed the connection")
    return int(line)


child = reply()
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda n, _: os.kill(child, n))
code = reply()
sys.exit(code if code >= 0 else 128 - code)
"""


def run_command(request: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's `lmforge` process, run the command, exit with its code."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.argv = ["lmforge", *request["argv"]]
    try:
        from lmforge.cli import main

        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(socket_path: str) -> None:
    """Accept commands forever; a helper child per command waits for it and reports its pid, then its exit code."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(socket_path)
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # helpers are reaped by the kernel
    print("ready", flush=True)
    while True:
        conn, _ = listener.accept()
        if os.fork():
            conn.close()
            continue
        listener.close()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        command = os.fork()
        if command == 0:
            conn.close()
            run_command(json.loads(message), fds)
        for fd in fds:
            os.close(fd)
        conn.sendall(f"{command}\n".encode())
        _, status = os.waitpid(command, 0)
        conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
        os._exit(0)


def main() -> None:
    socket_path, bin_dir = sys.argv[1], Path(sys.argv[2])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401  (torch.optim's first optimizer imports it)
    import transformers  # noqa: F401

    import lmforge.cli.main  # noqa: F401

    bin_dir.mkdir(parents=True, exist_ok=True)
    stand_in = bin_dir / "lmforge"
    stand_in.write_text(STAND_IN.format(python=sys.executable, socket_path=socket_path), encoding="utf-8")
    stand_in.chmod(0o755)
    serve(socket_path)


if __name__ == "__main__":
    main()
