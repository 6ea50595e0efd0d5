"""Observing another extension's handlers: its routes get a subclass of their handler class.

To see the person's input to a collaborative document or a proxied app, the extension needs the
messages those handlers receive, which no public hook offers. Rather than patching a class that
other servers in the process share, each route of this server whose handler is a subclass of
``base`` is pointed at a subclass made by ``observe``, through tornado's public routing API
(``RuleRouter.rules``, ``Rule.target``). Closing puts the original classes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

from tornado.routing import Rule, RuleRouter


def _rules(router: RuleRouter) -> Iterator[Rule]:
    for rule in router.rules:
        if isinstance(rule.target, RuleRouter):
            yield from _rules(rule.target)
        else:
            yield rule


def handler_rules(web_app: Any, base: type) -> list[Rule]:
    """Every route of the web app whose handler class is ``base`` or a subclass."""
    found = []
    for router in (web_app.default_router, web_app.wildcard_router):
        for rule in _rules(router):
            if isinstance(rule.target, type) and issubclass(rule.target, base):
                found.append(rule)
    return found


class ObservedRoutes:
    """The routes of ``base`` handlers, each pointed at ``observe(original class)``."""

    def __init__(self, web_app: Any, base: type, observe: Callable[[type], type]) -> None:
        self._originals: list[tuple[Rule, type]] = []
        made: dict[type, type] = {}
        for rule in handler_rules(web_app, base):
            original = rule.target
            if original not in made:
                made[original] = observe(original)
            self._originals.append((rule, original))
            rule.target = made[original]

    def __len__(self) -> int:
        return len(self._originals)

    def close(self) -> None:
        for rule, original in self._originals:
            rule.target = original
        self._originals = []
