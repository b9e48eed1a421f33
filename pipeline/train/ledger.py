"""The sample ledger: which keys each rank consumed, and which of those consumptions a checkpoint committed.

Each attempt (a start of the training loop, fresh or resumed) writes ``RUN_DIR/train/ledger/<attempt>/rank-<r>.jsonl``
with one line per consumed batch ({"epoch", "step", "trained": [keys], "skipped": [[key, reason]]}) and, before
each checkpoint is reported, a ``{"commit": <checkpoint id>}`` line: everything above it is inside that
checkpoint's data position. ``attempts.jsonl`` says which checkpoint each attempt resumed from.

The committed history is the chain that ends at the last attempt: each attempt's lines up to the commit its
successor resumed from (the last attempt: up to its own last commit). Lines after that point were trained on and
then lost to a crash; the resumed run consumed those samples again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO


class LedgerWriter:
    def __init__(self, train_dir: str | Path, attempt: str, rank: int, enabled: bool = True):
        self._file: TextIO | None = None
        if enabled:
            path = Path(train_dir) / "ledger" / attempt / f"rank-{rank}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")

    def _write(self, obj: dict[str, Any]) -> None:
        if self._file is not None:
            # flushed per line: the OS keeps the line even if this process is SIGKILLed right after
            self._file.write(json.dumps(obj) + "\n")
            self._file.flush()

    def batch(self, epoch: int, step: int, trained: list[str], skipped: list[list[str]]) -> None:
        if trained or skipped:
            self._write({"epoch": epoch, "step": step, "trained": trained, "skipped": skipped})

    def commit(self, checkpoint_id: str) -> None:
        self._write({"commit": checkpoint_id})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def record_attempt(train_dir: str | Path, attempt: str, resumed_from: str | None, **info: Any) -> None:
    with open(Path(train_dir) / "attempts.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"attempt": attempt, "resumed_from": resumed_from, **info}) + "\n")


def attempt_of(checkpoint_id: str) -> str:
    return checkpoint_id.rsplit("-", 1)[0]


def committed(train_dir: str | Path) -> dict[int, dict[str, list]]:
    """``{epoch: {"trained": [keys], "skipped": [[key, reason]]}}`` over the committed history."""
    train_dir = Path(train_dir)
    attempts = [json.loads(line) for line in (train_dir / "attempts.jsonl").read_text().splitlines() if line]
    by_id = {a["attempt"]: a for a in attempts}
    chain: list[tuple[str, str | None]] = []  # (attempt, commit id to read up to; None = its last commit)
    current, upto = attempts[-1]["attempt"], None
    while True:
        chain.append((current, upto))
        parent = by_id[current]["resumed_from"]
        if parent is None:
            break
        current, upto = attempt_of(parent), parent
        if current not in by_id:
            raise ValueError(f"attempt {current} (checkpoint {parent}) has no record in attempts.jsonl")
    out: dict[int, dict[str, list]] = {}
    for attempt, upto in reversed(chain):
        for path in sorted((train_dir / "ledger" / attempt).glob("rank-*.jsonl")):
            for line in _lines_until(path, upto):
                slot = out.setdefault(line["epoch"], {"trained": [], "skipped": []})
                slot["trained"].extend(line["trained"])
                slot["skipped"].extend(line["skipped"])
    return out


def _lines_until(path: Path, upto: str | None) -> list[dict[str, Any]]:
    lines, pending = [], []
    for raw in path.read_text().splitlines():
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:  # a line cut short by a kill; it was never committed
            continue
        if "commit" in obj:
            lines.extend(pending)
            pending = []
            if obj["commit"] == upto:
                return lines
        else:
            pending.append(obj)
    if upto is not None:
        raise ValueError(f"{path} has no commit {upto}, yet a later attempt resumed from it")
    return lines
