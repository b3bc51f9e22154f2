"""Read an offline W&B run file (``run-ID.wandb``): a LevelDB-style log of protobuf records.

W&B's own Python reader is gone (its service is written in Go now); tests read the file to
check what a run logged without a W&B server.
"""

import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2

HEADER = 7  # b":W&B", a 2-byte magic, a version byte
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, offset = [], b"", HEADER
    while offset + 7 <= len(data):
        if BLOCK - offset % BLOCK < 7:  # a block's tail too short for a header is padding
            offset += BLOCK - offset % BLOCK
            continue
        _crc, length, kind = struct.unpack_from("<IHB", data, offset)
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def read_finished_run(path: Path, timeout: float = 60.0) -> list[wandb_internal_pb2.Record]:
    """The records of a run file once W&B's service has written its exit record, so that a test never reads
    a file the service may still be writing (once, in a full test run, a file read right after wandb.finish()
    lacked its last history row, the last one the run logs)."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(path)
        if records and records[-1].WhichOneof("record_type") == "exit":
            return records
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout:.0f} s"
        time.sleep(0.2)


def history(records) -> list[dict[str, str]]:
    """Each logged row: metric name -> JSON value."""
    return [
        {item.key or "/".join(item.nested_key): item.value_json for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
