"""The executor's record of decisions already used: each decision authorizes one execution, ever."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path


class DecisionLedger:
    """A SQLite file in the executor's home; survives executor restarts."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS used_decision (decision_id TEXT PRIMARY KEY, call_id TEXT, "
                         "used_at TEXT DEFAULT CURRENT_TIMESTAMP)")
        self._lock = threading.Lock()

    def claim(self, decision_id: str, call_id: str) -> bool:
        """Mark a decision used; False if it was used before (a replay)."""
        with self._lock:
            try:
                self._db.execute("INSERT INTO used_decision (decision_id, call_id) VALUES (?, ?)", (decision_id, call_id))
                return True
            except sqlite3.IntegrityError:
                return False

    def close(self) -> None:
        self._db.close()
