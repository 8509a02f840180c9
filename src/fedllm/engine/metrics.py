"""metrics.jsonl: one JSON object per event (setup, step, client, drop, round, eval, checkpoint),
appended and flushed as it happens; truncated back to a checkpoint's offset on resume. Non-finite
numbers are written as null, so the file is strict JSON Lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedllm.jsonl import dumps
from fedllm.runs import RunError


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> RunError:
        return RunError(f"cannot write {self.path} ({e.strerror or e}); free space or choose a writable output_dir=, "
                        f"then resume with `fedllm train --resume {self.path.parent}`")

    def write(self, event: str, **fields: Any) -> None:
        try:
            self._fh.write(dumps({"event": event, **fields}) + "\n")
            self._fh.flush()
        except OSError as e:
            raise self._error(e) from None

    def offset(self) -> int:
        self._fh.flush()
        return self._fh.tell()

    def truncate(self, offset: int) -> None:
        """Cut the file back to ``offset`` (a checkpoint's); refuse if it is shorter than that."""
        self._fh.flush()
        size = os.fstat(self._fh.fileno()).st_size
        if size < offset:
            raise RunError(f"{self.path} is shorter ({size} bytes) than its checkpoint recorded ({offset}); it was "
                           f"cut or edited, so the run's history cannot be continued")
        self._fh.truncate(offset)
        self._fh.seek(offset)

    def close(self) -> None:
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as e:
            raise self._error(e) from None
        finally:
            self._fh.close()


def read_metrics(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if event is None or row.get("event") == event:
                    rows.append(row)
    return rows


def cost_summary(client_events: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals and rates over a run's ``client`` events (so a resumed run counts every round once).
    Bytes are the lengths of the real serialized messages."""
    steps = sum(e["steps"] for e in client_events)
    seconds = sum(e["seconds"] for e in client_events)
    tokens = sum(e["tokens"] for e in client_events)
    up = sum(e.get("bytes_up", 0) for e in client_events)
    down = sum(e.get("bytes_down", 0) for e in client_events)
    n = len(client_events)
    return {
        "client_rounds": n, "local_steps": steps, "train_tokens": tokens,
        "seconds_per_step": seconds / steps if steps else None,
        "tokens_per_s": tokens / seconds if seconds else None,
        "train_flops": sum(e.get("flops", 0.0) for e in client_events),
        "bytes_up": up, "bytes_down": down,
        "bytes_up_per_client_round": up / n if n else None, "bytes_down_per_client_round": down / n if n else None,
    }
