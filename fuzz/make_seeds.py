#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets (valid rings and tables, so the fuzzers
start from the interesting paths). The corpora in fuzz/corpus/ grow from these by fuzzing."""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
R0, R1 = 8192, 4096
DESC_AT, AVAIL_AT, USED_AT = 0, 0x400, 0x500
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
F_AVAIL, F_USED = 1 << 7, 1 << 15


def image():
    return bytearray(R0 + R1)


def put(img, off, fmt, *vals):
    struct.pack_into("<" + fmt, img, off, *vals)


def split_seed(flags, policy_bits=0):
    img = image()
    put(img, DESC_AT + 0 * 16, "QIHH", 0x1000, 64, F_NEXT, 1)
    put(img, DESC_AT + 1 * 16, "QIHH", 0x8000, 32, F_WRITE, 0)
    put(img, DESC_AT + 2 * 16, "QIHH", 0x1800, 32, F_INDIRECT, 0)
    put(img, 0x1800, "QIHH", 0x1100, 16, F_NEXT, 1)
    put(img, 0x1810, "QIHH", 0x8100, 16, F_WRITE, 0)
    put(img, DESC_AT + 3 * 16, "QIHH", 0x1200, 8, 0, 0)
    put(img, AVAIL_AT, "HHHHH", 0, 3, 0, 2, 3)
    hdr = bytes([3, flags | policy_bits, 0, 0])
    return hdr + bytes(img) + bytes([0, 2, 3, 0, 2, 4, 6, 0, 2])


def packed_seed(flags):
    img = image()
    put(img, DESC_AT + 0 * 16, "QIHH", 0x1000, 64, 0, F_AVAIL | F_NEXT)
    put(img, DESC_AT + 1 * 16, "QIHH", 0x8000, 32, 0, F_AVAIL | F_WRITE)
    put(img, DESC_AT + 2 * 16, "QIHH", 0x1800, 32, 1, F_AVAIL | F_INDIRECT)
    put(img, 0x1800, "QIHH", 0x1100, 16, 0, 0)
    put(img, 0x1810, "QIHH", 0x8100, 16, 0, F_WRITE)
    put(img, DESC_AT + 3 * 16, "QIHH", 0x1200, 8, 2, F_AVAIL)
    hdr = bytes([3, flags, 0, 0x80])  # base: position 0, wrap counter 1
    return hdr + bytes(img) + bytes([0, 2, 3, 0, 2, 4, 6, 0, 2])


def packed_lap_overrun_seed():
    """Issue 17, item 1: an IN_ORDER driver that reuses slots still in flight. Chain A covers
    the whole ring from slot 5; chain B sits in A's head slot one lap later while A is held;
    completing both as one batch used to move the used position past the ring's end."""
    img = image()
    for slot in range(5):
        put(img, DESC_AT + slot * 16, "QIHH", 0x1000, 64, slot, F_AVAIL)
    ops = bytearray([0, 2])  # pop and complete the five: both positions at slot 5

    def write_chain(first, n, buf_id, wrap):
        slots = []
        slot = first
        for _ in range(n):
            slots.append((slot, wrap))
            slot += 1
            if slot == 8:
                slot, wrap = 0, not wrap
        out = bytearray()
        for i in reversed(range(n)):  # the head last
            s, w = slots[i]
            flags = (F_AVAIL if w else F_USED) | (F_NEXT if i + 1 < n else 0)
            desc = struct.pack("<QIHH", 0x1000, 64 if i + 1 == n else 0, buf_id, flags)
            off = DESC_AT + s * 16
            out += bytes([5, off & 0xFF, off >> 8, 16]) + desc
        return out

    ops += write_chain(5, 8, 1, True)   # A, then pop and hold it
    ops += bytes([0xF0])
    ops += write_chain(5, 4, 2, False)  # B, then pop and hold, then complete both
    ops += bytes([0xF0, 0xF1, 2, 0xF3])
    hdr = bytes([3, 36, 0, 0x80])  # size 8, IN_ORDER, policy (36 >> 2) % 3 = any, position 0 wrap 1
    return hdr + bytes(img) + bytes(ops)


def translate_seed():
    out = bytes([2])
    out += struct.pack("<QHQ", 0x1000, 4096, 0x7F0000001000)
    out += struct.pack("<QHQ", 0x100000000, 100, 0x7F0000100000)
    for addr, ln, space in [(0x1000, 16, 0), (0x1FF0, 16, 2), (0x1FF0, 17, 0),
                            (0x7F0000001000, 4096, 1), (0x100000000, 100, 3),
                            (0xFFFFFFFFFFFFFFF0, 0x20, 0)]:
        out += struct.pack("<QQB", addr, ln, space)
    return out


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def main():
    write("split_chain_fuzz", "indirect", split_seed(1))
    write("split_chain_fuzz", "event-idx-uva", split_seed(1 | 2 | 16))
    write("split_chain_fuzz", "tx-policy", split_seed(1, 4))
    write("packed_chain_fuzz", "indirect", packed_seed(1))
    write("packed_chain_fuzz", "event-idx-uva", packed_seed(1 | 2 | 16))
    write("packed_chain_fuzz", "lap-overrun-in-order", packed_lap_overrun_seed())
    write("translate_fuzz", "two-regions", translate_seed())
    return 0


if __name__ == "__main__":
    sys.exit(main())
