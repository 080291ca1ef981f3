#!/usr/bin/python3
"""seg_compare.py KERNEL.pcap NICMUX.pcap: the TCP segments of one stream as the kernel cut
them and as nicmux did, compared field by field. Each capture's TCP/IPv4 frames are keyed by
sequence number (duplicates must agree); both must hold the same set, and each pair must agree
in every field of the Ethernet, IPv4 and TCP headers (checksums included) and in the payload.
Prints the first differences by field name and exits 1 if there are any."""
import struct
import sys


def frames(path):
    with open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    link = struct.unpack(end + "I", data[20:24])[0]
    if link != 1:
        sys.exit(f"{path}: link type {link}, not Ethernet")
    at = 24
    while at + 16 <= len(data):
        _, _, incl, orig = struct.unpack(end + "IIII", data[at:at + 16])
        at += 16
        if incl != orig:
            sys.exit(f"{path}: a frame cut to {incl} of {orig} bytes (snap length)")
        yield data[at:at + incl]
        at += incl


def csum(b):
    if len(b) & 1:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp_segments(path):
    out = {}
    for f in frames(path):
        if len(f) < 54 or f[12:14] != b"\x08\x00" or f[23] != 6:
            continue
        ihl = (f[14] & 15) * 4
        tot = struct.unpack("!H", f[16:18])[0]
        if 14 + tot != len(f) and not (len(f) == 60 and 14 + tot < 60):
            raise SystemExit(f"{path}: IPv4 total length {tot} for a {len(f)}-byte frame")
        f = f[:14 + tot]
        l4 = 14 + ihl
        seq = struct.unpack("!I", f[l4 + 4:l4 + 8])[0]
        if seq in out and out[seq] != f:
            raise SystemExit(f"{path}: two different segments at seq {seq}")
        out[seq] = f
    return out


FIELDS = [  # name, start, length (IPv4 without options, TCP header from l4)
    ("eth dst", 0, 6), ("eth src", 6, 6), ("ethertype", 12, 2), ("ip version/ihl", 14, 1), ("ip tos", 15, 1),
    ("ip total length", 16, 2), ("ip id", 18, 2), ("ip flags/fragment", 20, 2), ("ip ttl", 22, 1),
    ("ip protocol", 23, 1), ("ip header checksum", 24, 2), ("ip src", 26, 4), ("ip dst", 30, 4),
]
TCP = [("tcp sport", 0, 2), ("tcp dport", 2, 2), ("tcp seq", 4, 4), ("tcp ack", 8, 4), ("tcp offset", 12, 1),
       ("tcp flags", 13, 1), ("tcp window", 14, 2), ("tcp checksum", 16, 2), ("tcp urgent", 18, 2)]


def main():
    k, n = tcp_segments(sys.argv[1]), tcp_segments(sys.argv[2])
    if not k or not n:
        sys.exit(f"no TCP segments: kernel {len(k)}, nicmux {len(n)}")
    diffs = []
    if set(k) != set(n):
        diffs.append(f"segment sets differ: {len(k)} from the kernel, {len(n)} from nicmux, "
                     f"{len(set(k) ^ set(n))} not in both")
    for seq in sorted(set(k) & set(n)):
        a, b = k[seq], n[seq]
        l4 = 14 + (a[14] & 15) * 4
        for name, at, ln in FIELDS + [(nm, l4 + o, ln) for nm, o, ln in TCP]:
            if a[at:at + ln] != b[at:at + ln]:
                diffs.append(f"seq {seq}: {name}: kernel {a[at:at + ln].hex()} nicmux {b[at:at + ln].hex()}")
        hl = l4 + (a[l4 + 12] >> 4) * 4
        if a[l4 + 20:hl] != b[l4 + 20:hl]:
            diffs.append(f"seq {seq}: tcp options differ")
        if a[hl:] != b[hl:]:
            diffs.append(f"seq {seq}: payload differs ({len(a) - hl} vs {len(b) - hl} bytes)")
        # Both must also verify on their own (a shared wrong sum would agree).
        ph = a[26:34] + struct.pack("!BBH", 0, 6, len(a) - l4)
        if csum(ph + a[l4:]) != 0xFFFF or csum(a[14:l4]) != 0xFFFF:
            diffs.append(f"seq {seq}: the kernel's checksums do not verify")
    for d in diffs[:20]:
        print("DIFF", d)
    if diffs:
        sys.exit(1)
    sizes = sorted({len(f) for f in k.values()})
    print(f"ok: {len(k)} segments identical field by field (frame sizes {sizes[0]}..{sizes[-1]})")


main()
