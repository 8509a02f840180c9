"""metrics.jsonl: one JSON object per event (step, client, round, eval, checkpoint), appended and
flushed as it happens; truncated back to a checkpoint's offset on resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class MetricsLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, event: str, **fields: Any) -> None:
        self._fh.write(json.dumps({"event": event, **_clean(fields)}, ensure_ascii=False) + "\n")
        self._fh.flush()

    def offset(self) -> int:
        self._fh.flush()
        return self._fh.tell()

    def truncate(self, offset: int) -> None:
        self._fh.flush()
        self._fh.truncate(offset)
        self._fh.seek(offset)

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
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
