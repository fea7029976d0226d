#!/usr/bin/python3
"""One NBD connection through libnbd (Debian's python3-libnbd), driven by the nemesis.

The nemesis (integration/src/nemesis/nbd.rs) sends requests on stdin and reads the answers on
stdout, one at a time, all numbers big-endian:
  request: op (1 byte: b"R" read, b"W" write), offset (u64), length (u32), then a write's data;
  answer:  status (1 byte: 0 ok, 1 failed), length (u32), then a read's data or an error message.
The first answer, before any request, carries the export's size (u64).
"""

import struct
import sys

import nbd


def main():
    handle = nbd.NBD()
    handle.set_handle_name("vbs-nemesis")
    handle.connect_uri(sys.argv[1])
    into, out = sys.stdin.buffer, sys.stdout.buffer

    def answer(ok, payload=b""):
        out.write(struct.pack(">BI", 0 if ok else 1, len(payload)))
        out.write(payload)
        out.flush()

    answer(True, struct.pack(">Q", handle.get_size()))
    while True:
        head = into.read(13)
        if len(head) < 13:
            return
        op, offset, length = struct.unpack(">cQI", head)
        data = into.read(length) if op == b"W" else b""
        try:
            if op == b"W":
                handle.pwrite(data, offset)
                answer(True)
            elif op == b"R":
                answer(True, handle.pread(length, offset))
            else:
                answer(False, b"unknown request")
        except nbd.Error as error:
            answer(False, str(error).encode())


if __name__ == "__main__":
    main()
