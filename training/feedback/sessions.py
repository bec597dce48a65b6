"""Sessions from the service's impression and feedback log: what one /rank answer showed, and which of its items
the user acted on.

A session is an impression (`service.events`) with the feedback that names its `request_id`. Any feedback event
(`click`, `add_to_cart`, `purchase`) on an item counts as a click on it: a purchase was a click first. Feedback whose
impression was not sampled (`RANK_LOG_SAMPLE` below 1) cannot be placed on a position; it is kept in the log and
counted here as unmatched, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SEGMENT_GLOB = "events-*.jsonl"  # the service's complete segments (service.events); `.partial` ones are skipped


@dataclass(frozen=True)
class Session:
    """One logged answer: its query (normalised as served), the items by position (index 0 is position 1), the
    clicked items, and the two adjacent positions exploration swapped (1-based), if it did."""

    request_id: str
    query: str
    shown: tuple[str, ...]
    clicked: frozenset[str]
    explored: tuple[int, int] | None = None


@dataclass(frozen=True)
class FeedbackLog:
    """The sessions of a log directory, oldest first, and what could not be joined."""

    sessions: list[Session]
    impressions: int
    feedback: int  # feedback records read
    unmatched: int  # feedback for a request whose impression is not in the log (not sampled, or elsewhere)
    off_list: int  # feedback for an item the impression did not show

    def summary(self) -> str:
        clicks = sum(len(s.clicked) for s in self.sessions)
        explored = sum(s.explored is not None for s in self.sessions)
        return (
            f"{self.impressions} impressions ({explored} explored), {self.feedback} feedback records: {clicks} clicks "
            f"joined, {self.unmatched} for requests whose impression was not logged, {self.off_list} for items not "
            "shown"
        )


class FeedbackError(ValueError):
    """A feedback log that cannot be trained from; the message says what to do."""


def read_feedback_log(directory: Path) -> FeedbackLog:
    """Join the impressions and feedback of `directory`'s complete segments by request id."""
    if not directory.is_dir():
        raise FeedbackError(f"feedback log {directory} does not exist: point FEEDBACK at the service's RANK_LOG_DIR")
    segments = sorted(directory.glob(SEGMENT_GLOB))
    if not segments:
        raise FeedbackError(
            f"feedback log {directory} has no complete segment ({SEGMENT_GLOB}): serve with RANK_LOG_DIR={directory} "
            "and RANK_LOG_SAMPLE above 0, or run `make simulate`"
        )
    impressions: dict[str, dict] = {}
    clicks: dict[str, set[str]] = {}
    feedback = 0
    for segment in segments:
        for number, line in enumerate(segment.read_text(encoding="utf-8").splitlines(), 1):
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise FeedbackError(
                    f"{segment}:{number} is not JSON; a complete segment never holds such a line"
                ) from None
            if record.get("kind") == "impression":
                impressions[record["request_id"]] = record
            elif record.get("kind") == "feedback":
                feedback += 1
                clicks.setdefault(record["request_id"], set()).add(record["item_id"])
    sessions, off_list = [], 0
    for request_id, record in impressions.items():
        shown = tuple(item["id"] for item in sorted(record["items"], key=lambda item: item["position"]))
        acted = clicks.get(request_id, set())
        off_list += len(acted - set(shown))
        explored = record.get("explored")
        sessions.append(
            Session(
                request_id=request_id,
                query=record["query"],
                shown=shown,
                clicked=frozenset(acted & set(shown)),
                explored=(int(explored[0]), int(explored[1])) if explored else None,
            )
        )
    unmatched = sum(len(items) for request_id, items in clicks.items() if request_id not in impressions)
    return FeedbackLog(sessions, len(impressions), feedback, unmatched, off_list)
