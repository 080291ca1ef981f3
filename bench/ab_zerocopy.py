#!/usr/bin/python3
"""bench/ab_zerocopy.py: zero copy towards a dpdk device on vs off (docs/dpdk.md "Zero copy").

bench/run's uplink path over net_memif (nicmux-pktgen --mode tx on CPU 0 -> nicmuxd xconnect
on CPU 1, a vhost-user port -> a dpdk net_memif server -> testpmd rxonly on CPU 0), run with the
dpdk port's zerocopy_min=MIN ("zc") and with zerocopy_min=off ("copy"), alternating: each
run starts with the other one, every size in each. Prints each point, then per size the
medians, their range and the median of the per-run ratios zc/copy (ratios within one run: the
machine may be shared). Results: OUT/results.csv and OUT/report.md.

usage: bench/ab_zerocopy.py [--runs N] [--seconds S] [--sizes 512,1518] [--min 512] [--out DIR]
Needs the release build (build/release/tools) and root.
"""
import argparse
import csv
import importlib.machinery
import importlib.util
import os
import statistics
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_loader = importlib.machinery.SourceFileLoader("bench_run", os.path.join(HERE, "run"))
_spec = importlib.util.spec_from_loader("bench_run", _loader)
run = importlib.util.module_from_spec(_spec)
_loader.exec_module(run)


class UplinkZc(run.UplinkNicmux):
    """bench/run's UplinkNicmux on memif, with the dpdk port's zerocopy_min given."""

    def __init__(self, zc_min, workdir):
        super().__init__("memif", workdir)
        self.zc_min = zc_min
        self.name = "zc" if zc_min != "off" else "copy"

    def start(self):
        self.sock0 = os.path.join(self.dir, "p0.sock")
        self.memif = os.path.join(self.dir, "m0.sock")
        up = (f"dpdk:m0:devargs=net_memif0;role=server;socket={self.memif};socket-abstract=no,queues=2,"
              f"zerocopy_min={self.zc_min}")
        p = run.Proc("nicmuxd", [os.path.join(run.BIN, "nicmuxd"), "--forward", "xconnect", "--control",
                                 os.path.join(self.dir, "ctl"), "--cpu", str(run.BACK_CPU), "--log-level", "info",
                                 "--port", up, "--port", f"vhost-user:p0:socket={self.sock0}"], self.dir)
        self.procs.append(p)
        run.wait_path(self.sock0, 30, p)
        self.nicmuxd = p

    def counts(self):
        """tx_zerocopy, tx_copied of the dpdk port (nicmuxctl)."""
        import json
        import subprocess
        out = subprocess.run([os.path.join(run.BIN, "nicmuxctl"), "--socket", os.path.join(self.dir, "ctl"), "--json",
                              "port", "show", "m0"], capture_output=True, text=True, check=True).stdout
        d = json.loads(out)
        return int(d.get("tx_zerocopy", 0)), int(d.get("tx_copied", 0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--sizes", default="512,1518")
    ap.add_argument("--min", default="512", help="zerocopy_min of the zc runs")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    out = a.out or os.path.join(HERE, "results", "zerocopy-" + time.strftime("%Y-%m-%d-%H%M%S"))
    os.makedirs(out, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="nicmux-abzc.")
    rows = []
    for r in range(a.runs):
        order = ["off", a.min] if r % 2 == 0 else [a.min, "off"]
        for zc in order:
            be = UplinkZc(zc, workdir)
            try:
                be.start()
                tp = run.uplink_testpmd(be, workdir)
                for size in sizes:
                    z0, c0 = be.counts()
                    res = run.uplink_point(be, tp, size, a.seconds, 2, workdir)
                    z1, c1 = be.counts()
                    share = (z1 - z0) / max(1, (z1 - z0) + (c1 - c0)) if zc != "off" else 0.0
                    rows.append({"run": r, "mode": be.name, "size": size, "mpps": res["mpps"],
                                 "offered_mpps": res["offered_mpps"], "zc_share": share})
                    run.log(f"run {r} {be.name:4s} {size:5d} B: {res['mpps']:6.3f} Mpps (pktgen offered "
                            f"{res['offered_mpps']:.3f}), {100 * share:.0f} % of frames zero copy")
            finally:
                be.stop()
    with open(os.path.join(out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)
    md = ["# Zero copy towards a dpdk net_memif device: on vs off", "",
          f"bench/ab_zerocopy.py --runs {a.runs} --seconds {a.seconds} --sizes {a.sizes} --min {a.min}: "
          "pktgen tx -> nicmuxd xconnect -> dpdk net_memif -> testpmd rxonly; Mpps received by testpmd. "
          "Ratio: the median of the per-run ratios zc/copy (each run has both, back to back).", "",
          "| size | copy Mpps (min–max) | zero copy Mpps (min–max) | zc/copy (per-run ratios) |", "|---|---|---|---|"]
    for size in sizes:
        c = {x["run"]: x["mpps"] for x in rows if x["size"] == size and x["mode"] == "copy"}
        z = {x["run"]: x["mpps"] for x in rows if x["size"] == size and x["mode"] == "zc"}
        ratios = [z[k] / c[k] for k in c if k in z and c[k] > 0]
        cell = lambda v: f"{statistics.median(v):.3f} ({min(v):.3f}–{max(v):.3f})"
        md.append(f"| {size} | {cell(list(c.values()))} | {cell(list(z.values()))} | "
                  f"{statistics.median(ratios):.3f} ({', '.join(f'{x:.3f}' for x in ratios)}) |")
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text)
    print(text)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
