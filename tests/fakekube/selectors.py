"""Label and field selectors with the API server's grammar, matching and error messages.

Label selectors follow k8s.io/apimachinery/pkg/labels: equality (``=``, ``==``, ``!=``),
set-based (``in``, ``notin``), existence (``key``, ``!key``) and ``>``/``<``; keys and
values are validated like the server does, so a selector the server would reject with
400 is rejected here too. Field selectors accept only the field labels the resource
type registers (``metadata.name`` for everything; ``status.phase`` for pods, ...); any
other label is "field label not supported", as on a real cluster.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.fakekube.resources import ResourceType
from tests.fakekube.status import ApiError, bad_request

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SPECIAL = set(" \t\n,=!()<>")
_OPERATORS = ("==", "!=", "=", "!", "(", ")", ",", ">", "<")


@dataclass(frozen=True)
class Requirement:
    """One ``key op values`` term of a label selector."""

    key: str
    op: str  # "exists", "!", "=", "!=", "in", "notin", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        checks: dict[str, Callable[[], bool]] = {
            "exists": lambda: present,
            "!": lambda: not present,
            "=": lambda: present and value in self.values,
            "in": lambda: present and value in self.values,
            "!=": lambda: not present or value not in self.values,
            "notin": lambda: not present or value not in self.values,
            ">": lambda: _int_compare(value, self.values[0], greater=True),
            "<": lambda: _int_compare(value, self.values[0], greater=False),
        }
        return checks[self.op]()


def _int_compare(value: str | None, bound: str, *, greater: bool) -> bool:
    if value is None:
        return False
    try:
        number = int(value)
    except ValueError:
        return False
    return number > int(bound) if greater else number < int(bound)


class LabelSelector:
    """A parsed label selector; the empty selector matches everything."""

    def __init__(self, requirements: list[Requirement]) -> None:
        self.requirements = requirements

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(req.matches(labels) for req in self.requirements)


def _lex(text: str) -> list[str]:
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is not None:
            tokens.append(op)
            i += len(op)
            continue
        start = i
        while i < len(text) and text[i] not in _SPECIAL:
            i += 1
        tokens.append(text[start:i])
    return tokens


def _is_ident(token: str | None) -> bool:
    return token is not None and token not in _OPERATORS


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _lex(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str | None:
        token = self.peek()
        self.pos += 1
        return token

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while self.peek() is not None:
            requirements.append(self.requirement())
            token = self.take()
            if token is None:
                break
            if token != ",":
                raise bad_request(f"found '{token}', expected: ',' or 'end of string'")
            if self.peek() is None:
                raise bad_request("found '', expected: identifier after ','")
        return requirements

    def requirement(self) -> Requirement:
        token = self.take()
        if token == "!":
            key = self.take()
            if not _is_ident(key):
                raise bad_request(f"found '{key or ''}', expected: identifier after '!'")
            assert key is not None
            _validate_key(key)
            return Requirement(key, "!")
        if not _is_ident(token):
            raise bad_request(f"found '{token}', expected: !, identifier, or 'end of string'")
        assert token is not None
        _validate_key(token)
        op = self.peek()
        if op is None or op == ",":
            return Requirement(token, "exists")
        self.take()
        if op in ("=", "==", "!="):
            value = self.take() if _is_ident(self.peek()) else ""
            _validate_value(token, value or "")
            return Requirement(token, "!=" if op == "!=" else "=", (value or "",))
        if op in ("in", "notin"):
            return Requirement(token, op, self.value_set(token))
        if op in (">", "<"):
            value = self.take() or ""
            if not value.lstrip("-").isdigit():
                raise bad_request(
                    f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must be "
                    f"an integer: {value}"
                )
            return Requirement(token, op, (value,))
        raise bad_request(f"found '{op}', expected: in, notin, =, ==, !=, gt, lt")

    def value_set(self, key: str) -> tuple[str, ...]:
        if self.take() != "(":
            raise bad_request("found '', expected: '('")
        values: list[str] = []
        while True:
            token = self.take()
            if token == ")" and not values:
                raise bad_request(
                    f"unable to parse requirement: values: Invalid value: []: for 'in', "
                    f"'notin' operators, values set can't be empty (key {key})"
                )
            if not _is_ident(token):
                raise bad_request(f"found '{token or ''}', expected: identifier")
            assert token is not None
            _validate_value(key, token)
            values.append(token)
            closing = self.take()
            if closing == ")":
                return tuple(values)
            if closing != ",":
                raise bad_request(f"found '{closing or ''}', expected: ',' or ')'")


def _validate_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    problems = []
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        problems.append("prefix part must be a lowercase RFC 1123 subdomain")
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        problems.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must "
            "start and end with an alphanumeric character"
        )
    if problems:
        raise bad_request(
            f'unable to parse requirement: key: Invalid value: "{key}": {"; ".join(problems)}'
        )


def _validate_value(key: str, value: str) -> None:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(
            f'unable to parse requirement: values[0][{key}]: Invalid value: "{value}": a valid '
            "label must be an empty string or consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character"
        )


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse ``labelSelector``; raise a 400 ``ApiError`` for what the server rejects."""
    if not text or not text.strip():
        return LabelSelector([])
    return LabelSelector(_LabelParser(text).parse())


@dataclass(frozen=True)
class FieldTerm:
    field: str
    value: str
    negate: bool

    def matches(self, fields: Mapping[str, str]) -> bool:
        equal = fields.get(self.field, "") == self.value
        return not equal if self.negate else equal


class FieldSelector:
    def __init__(self, terms: list[FieldTerm]) -> None:
        self.terms = terms

    @property
    def empty(self) -> bool:
        return not self.terms

    def matches(self, obj: Mapping[str, Any]) -> bool:
        if not self.terms:
            return True
        fields = {term.field: field_value(obj, term.field) for term in self.terms}
        return all(term.matches(fields) for term in self.terms)


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, current, escaped = [], [], False
    for ch in text:
        if escaped:
            current.append("\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _parse_term(term: str) -> FieldTerm:
    for op in ("!=", "==", "="):
        index = _find_unescaped(term, op)
        if index >= 0:
            field = term[:index].strip()
            value = _unescape(term[index + len(op) :])
            return FieldTerm(field, value, negate=op == "!=")
    raise bad_request(f"invalid selector: '{term}'; can't understand '{term}'")


def _find_unescaped(text: str, needle: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


def parse_field_selector(text: str | None, rtype: ResourceType) -> FieldSelector:
    """Parse ``fieldSelector`` and reject labels the resource type does not support."""
    if not text or not text.strip():
        return FieldSelector([])
    terms = [_parse_term(part) for part in _split_unescaped(text, ",") if part.strip()]
    supported = rtype.field_labels()
    for term in terms:
        if term.field not in supported:
            raise _unsupported_field(term.field, rtype)
    return FieldSelector(terms)


def _unsupported_field(field: str, rtype: ResourceType) -> ApiError:
    if rtype.custom:
        allowed = ", ".join(f'"{name}"' for name in rtype.field_labels())
        return bad_request(f'"{field}" is not a known field selector: only {allowed}')
    return bad_request(f"field label not supported: {field}")


def field_value(obj: Mapping[str, Any], label: str) -> str:
    """The string a field label has on ``obj`` (bools lower-case, missing = "")."""
    path, default = _FIELD_ALIASES.get(label, (label, ""))
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    if isinstance(node, bool):
        return "true" if node else "false"
    return default if node is None else str(node)


# Field labels whose object path or zero value differs from the label (the strategies'
# GetAttrs functions): Job "status.successful" is status.succeeded printed as an int.
_FIELD_ALIASES = {
    "source": ("source.component", ""),
    "status.successful": ("status.succeeded", "0"),
    "spec.hostNetwork": ("spec.hostNetwork", "false"),
    "spec.unschedulable": ("spec.unschedulable", "false"),
    "status.replicas": ("status.replicas", "0"),
}
