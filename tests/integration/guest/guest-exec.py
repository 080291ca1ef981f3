#!/usr/bin/env python3
"""guest-exec.py - runs one shell command in a nicmux test guest that is in
serve mode (run-guest.sh --serve/--mode serve --console-socket SOCK), over its
serial console, and exits with the command's status.

Protocol (init.sh, "console agent"): the host sends one line
    NICMUX-EXEC <id> <base64 of the command>
and the guest answers, on the console,
    NICMUX-BEGIN id=<id>
    ...output of sh -c '<command>' (stdout and stderr)...
    NICMUX-RESULT id=<id> rc=<N>
The console may also carry other output (a background command's, kernel
messages); only the text between the two markers is printed.

QEMU's socket chardev takes one client at a time; this tool connects,
sends, reads until the result, and disconnects.

usage: guest-exec.py [--timeout S] [--wait-agent S] SOCKET COMMAND...
exit status: the command's, 124 on timeout, 2 on a connection error.
"""
import argparse
import base64
import os
import re
import socket
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(
        description="run a command in a serve-mode nicmux test guest")
    ap.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for the result (default 120)")
    ap.add_argument("--connect-timeout", type=float, default=30.0,
                    help="seconds to retry connecting to SOCKET (default 30)")
    ap.add_argument("socket", help="console UNIX socket (--console-socket)")
    ap.add_argument("command", nargs="+",
                    help="command line (words are joined with spaces)")
    args = ap.parse_args()
    cmd = " ".join(args.command)

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + args.connect_timeout
    while True:
        try:
            sock.connect(args.socket)
            break
        except OSError as e:
            if time.monotonic() > deadline:
                print(f"guest-exec: cannot connect to {args.socket}: {e}",
                      file=sys.stderr)
                return 2
            time.sleep(0.2)

    ident = os.urandom(6).hex()
    line = f"NICMUX-EXEC {ident} {base64.b64encode(cmd.encode()).decode()}\n"
    if len(line) > 4000:  # the tty's canonical line limit is 4095
        print("guest-exec: command too long", file=sys.stderr)
        return 2
    sock.sendall(line.encode())

    begin = f"NICMUX-BEGIN id={ident}".encode()
    result = re.compile(rb"\nNICMUX-RESULT id=" + ident.encode() + rb" rc=(\d+)")
    buf = b""
    deadline = time.monotonic() + args.timeout
    while True:
        m = result.search(buf)
        if m:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"guest-exec: timeout ({args.timeout}s) waiting for the result",
                  file=sys.stderr)
            return 124
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            print("guest-exec: console closed (guest gone?)", file=sys.stderr)
            return 2
        buf += data
    sock.close()

    start = buf.find(begin)
    out = buf[start + len(begin):m.start()] if start >= 0 else buf[:m.start()]
    out = out.replace(b"\r", b"")
    if out.startswith(b"\n"):
        out = out[1:]
    sys.stdout.buffer.write(out + (b"\n" if out and not out.endswith(b"\n") else b""))
    return int(m.group(1))


if __name__ == "__main__":
    sys.exit(main())
