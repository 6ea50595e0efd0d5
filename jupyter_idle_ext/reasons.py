"""Why a decision was made, as data, and its one rendering for people.

The policy says why with a ``Reason``: clauses naming what they say (``"idle_over"``), the rule and
limit they compare with, what they are about, and the clocks their durations count from. The log,
the status, events and the page all render it from the same texts (reasons.json): the server here,
the page in frontend/src/format.ts from the ``why`` of each decision in ``api/idle``, with its
durations moving on between reads. A reason is rendered when it is read, with durations counted to
then; the decision keeps only the times they count from.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from functools import partial
from importlib import resources
from typing import Any

_TABLE = json.loads(resources.files(__package__).joinpath("reasons.json").read_text("utf-8"))
PHRASES: dict[str, str] = _TABLE["phrases"]
JOINS: dict[str, str] = _TABLE["joins"]
_FIELD = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Clause:
    """One thing a reason says: ``says`` names its text in reasons.json, the rest fills it."""

    says: str
    rule: str = ""
    # the rule's limit in seconds
    limit: float | None = None
    # what it is about, for people: "kernel 3f2a5b1c busy", "process 81 `python train.py`"
    subject: str = ""
    count: int | None = None
    # a time for people (UTC ISO 8601)
    at: str = ""
    # what it did or does, for people: "saved", "input", "0 % CPU"
    detail: str = ""

    def __post_init__(self) -> None:
        if self.says not in PHRASES:
            raise ValueError(f"no text for a reason clause {self.says!r} in reasons.json")


@dataclass(frozen=True)
class Reason:
    """Clauses, the times their durations count from (monotonic), and the deadline for
    ``{left}``."""

    clauses: tuple[Clause, ...]
    clocks: tuple[tuple[str, float], ...] = ()
    deadline: float | None = None

    def seconds(self, now: float) -> dict[str, float]:
        values = {name: max(0.0, now - since) for name, since in self.clocks}
        if self.deadline is not None:
            values["left"] = max(0.0, self.deadline - now)
        return values

    def as_json(self, now: float, digits: int | None = 1) -> dict[str, Any]:
        """The reason as the status carries it (``why``), with its durations as of ``now``
        (rounded to ``digits`` decimals; None: as they are)."""
        clauses = []
        for clause in self.clauses:
            # the fields it has (an empty one says nothing)
            clauses.append({k: v for k, v in asdict(clause).items() if v not in ("", None)})
        seconds = {
            name: value if digits is None else round(value, digits)
            for name, value in self.seconds(now).items()
        }
        return {"clauses": clauses, "seconds": seconds}

    def text(self, now: float) -> str:
        return render(self.as_json(now, digits=None))


def say(says: str, **fields: Any) -> Reason:
    """A reason of one clause with no durations: ``say("dead")``."""
    return Reason((Clause(says, **fields),))


def seconds(value: float) -> str:
    """A duration for people in the log's unit: "12 s" (half a second rounds up, as on the page)."""
    return f"{math.floor(max(0.0, value) + 0.5)} s"


def _field(fields: dict[str, str], match: re.Match[str]) -> str:
    # a field the clause does not have (an empty one is left out of its why) says nothing
    return fields.get(match.group(1), "")


def render(why: dict[str, Any], elapsed: float = 0.0) -> str:
    """A reason's text from its ``why``, ``elapsed`` seconds after it was read (frontend/src/
    format.ts renders the same)."""
    values = {
        name: seconds(value - elapsed if name == "left" else value + elapsed)
        for name, value in why.get("seconds", {}).items()
    }
    text = ""
    for i, clause in enumerate(why["clauses"]):
        fields = {**values, **{k: str(v) for k, v in clause.items()}}
        if clause.get("limit") is not None:
            fields["limit"] = seconds(clause["limit"])
        phrase = _FIELD.sub(partial(_field, fields), PHRASES[clause["says"]])
        text += (JOINS.get(clause["says"], "; ") if i else "") + phrase
    return text
