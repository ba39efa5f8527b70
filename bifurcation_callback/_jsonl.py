"""Reading JSON-lines files (``events.jsonl``): one JSON object per line, blank lines skipped."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_jsonl"]


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (one JSON object per line, blank lines skipped).

    Raises
    ------
    ValueError
        A line that is not JSON, named by file and line number.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "events.jsonl"
    >>> _ = path.write_text('{"step": 0}\\n\\n{"step": 1}\\n')
    >>> read_jsonl(path)
    [{'step': 0}, {'step': 1}]
    >>> _ = path.write_text('{"step": 0}\\n{"step": \\n')
    >>> read_jsonl(path)
    Traceback (most recent call last):
    ...
    ValueError: ...events.jsonl, line 2: not valid JSON (Expecting value: line 2 column 1 (char 10))
    """
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from None
    return records
