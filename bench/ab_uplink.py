#!/usr/bin/python3
"""bench/ab_uplink.py: two nicmuxd builds on bench/run's uplink path over net_memif, alternating.

nicmux-pktgen --mode tx (CPU 0) -> nicmuxd xconnect (CPU 1), a vhost-user port -> a dpdk
net_memif server (two queue pairs) -> testpmd rxonly (CPU 0). Build A is --a-bin (default
build/release/tools), build B --b-bin (a tools folder of another build, e.g. a worktree of an
older commit). Each run starts with the other build, every size in each; pktgen, testpmd and
nicmuxctl are A's in both. Prints each point, then per size the medians, their range and the
median of the per-run ratios A/B (ratios within one run: the machine may be shared).

usage: bench/ab_uplink.py --b-bin DIR [--a-bin DIR] [--runs N] [--seconds S] [--sizes 64,1518]
Needs root.
"""
import argparse
import importlib.machinery
import importlib.util
import os
import statistics
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
_loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(HERE, "run"))
_spec = importlib.util.spec_from_loader("bench_run", _loader)
run = importlib.util.module_from_spec(_spec)
_loader.exec_module(run)


class UplinkBuild(run.UplinkNicmux):
    """bench/run's UplinkNicmux on memif with the nicmuxd of `bin_dir`."""

    def __init__(self, name, bin_dir, a_bin, workdir):
        super().__init__("memif", workdir)
        self.name, self.bin_dir, self.a_bin = name, bin_dir, a_bin

    def start(self):
        run.BIN = self.bin_dir
        try:
            super().start()
        finally:
            run.BIN = self.a_bin  # (pktgen and the rest: A's)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a-bin", default=run.BIN)
    ap.add_argument("--b-bin", required=True)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--sizes", default="64,1518")
    a = ap.parse_args()
    a_bin, b_bin = os.path.abspath(a.a_bin), os.path.abspath(a.b_bin)
    for d in (a_bin, b_bin):
        if not os.access(os.path.join(d, "nicmuxd"), os.X_OK):
            ap.error(f"{d}: no nicmuxd there")
    run.BIN = a_bin
    sizes = [int(s) for s in a.sizes.split(",")]
    workdir = tempfile.mkdtemp(prefix="nicmux-abup.")
    mpps = {}  # (run, build, size) -> Mpps
    for r in range(a.runs):
        order = [("A", a_bin), ("B", b_bin)] if r % 2 == 0 else [("B", b_bin), ("A", a_bin)]
        for name, d in order:
            be = UplinkBuild(name, d, a_bin, workdir)
            try:
                be.start()
                tp = run.uplink_testpmd(be, workdir)
                for size in sizes:
                    res = run.uplink_point(be, tp, size, a.seconds, 2, workdir)
                    mpps[(r, name, size)] = res["mpps"]
                    run.log(f"run {r} {name} {size:5d} B: {res['mpps']:6.3f} Mpps (offered {res['offered_mpps']:.3f})")
            finally:
                be.stop()
    print(f"A = {a_bin}\nB = {b_bin}\n")
    print("| size | A Mpps (min–max) | B Mpps (min–max) | A/B (per-run ratios) |\n|---|---|---|---|")
    for size in sizes:
        av = [mpps[(r, "A", size)] for r in range(a.runs)]
        bv = [mpps[(r, "B", size)] for r in range(a.runs)]
        ratios = [x / y for x, y in zip(av, bv) if y > 0]
        cell = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"
        print(f"| {size} | {cell(av)} | {cell(bv)} | {statistics.median(ratios):.3f} "
              f"({', '.join(f'{x:.3f}' for x in ratios)}) |")


if __name__ == "__main__":
    main()
