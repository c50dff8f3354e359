"""``python -m tests.helpers.killer POINT lowbit ARGS...``: run the lowbit CLI and kill -9 this
very process at POINT, a real SIGKILL (no handler, no cleanup runs):

- ``after:K``: just after block K's checkpoint is recorded;
- ``mid:K``: halfway through writing block K's shard (half its bytes on disk);
- ``manifest:K``: halfway through rewriting the checkpoint manifest for block K;
- ``at:S``: S seconds after the start, wherever the run is;
- ``run:S``: S seconds after the checkpoint is opened (the quantization proper has begun:
  the benchmark's random moments).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _half(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
    _die()


def _timer(seconds: float) -> None:
    timer = threading.Timer(seconds, _die)
    timer.daemon = True
    timer.start()


def arm(point: str) -> None:
    kind, _, value = point.partition(":")
    if kind == "at":
        _timer(float(value))
        return
    if kind == "run":
        from lowbit.models.checkpoint import Checkpoint

        start = Checkpoint.start.__func__  # type: ignore[attr-defined]

        def timed_start(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
            _timer(float(value))
            return start(cls, *args, **kwargs)

        Checkpoint.start = classmethod(timed_start)  # type: ignore[method-assign,assignment]
        return
    k = int(value)
    if kind == "after":
        from lowbit.models.checkpoint import Checkpoint

        record = Checkpoint.record

        def killing_record(self, i, *args, **kwargs):  # type: ignore[no-untyped-def]
            record(self, i, *args, **kwargs)
            if i == k:
                _die()

        Checkpoint.record = killing_record  # type: ignore[method-assign]
    elif kind == "mid":
        import safetensors.torch as st

        save_file = st.save_file

        def killing_save(tensors, filename, metadata=None):  # type: ignore[no-untyped-def]
            if os.path.basename(str(filename)) == f"blocks-{k:05d}.safetensors":
                _half(str(filename), st.save(tensors, metadata=metadata))
            return save_file(tensors, filename, metadata=metadata)

        st.save_file = killing_save
    elif kind == "manifest":
        import json

        import lowbit.models.checkpoint as ck

        write_json = ck.write_json

        def killing_write(path, data, *, overwrite=False):  # type: ignore[no-untyped-def]
            if str(k) in data.get("blocks", {}):
                tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.x.partial")
                _half(tmp, json.dumps(data).encode())
            return write_json(path, data, overwrite=overwrite)

        ck.write_json = killing_write
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from lowbit.cli.main import main

    sys.argv = ["lowbit", *sys.argv[2:]]
    main()
