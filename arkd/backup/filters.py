"""Include/exclude lists, resource-name resolution and label selectors with Ark 0.9 semantics.

Pure logic: callers turn `FilterValidationError.errors` into a Backup's or Restore's
`status.validationErrors`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from arkd.kube.resource import Resource

WILDCARD = "*"


class FilterValidationError(ValueError):
    """One or more problems with user-supplied filters; `errors` holds one message each."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(self.errors))


# --------------------------------------------------------------------------- includes/excludes


def validate_includes_excludes(includes: Iterable[str], excludes: Iterable[str]) -> list[str]:
    """Ark's `ValidateIncludesExcludes`: the messages are Ark's, so users see familiar errors."""
    inc = set(includes)
    exc = set(excludes)
    errors: list[str] = []
    if len(inc) > 1 and WILDCARD in inc:
        errors.append("includes list must either contain '*' only, or a non-empty list of items")
    if WILDCARD in exc:
        errors.append("excludes list cannot contain '*'")
    errors.extend(
        f"excludes list cannot contain an item in the includes list: {item}"
        for item in sorted(exc & inc)
        if item != WILDCARD
    )
    return errors


class IncludesExcludes:
    """Everything in `includes` (empty or "*" = everything) except what is in `excludes`.

    Excludes always win; a "*" exclude excludes everything (validation reports it, but if a caller
    builds one anyway it must not silently include).
    """

    def __init__(self, includes: Iterable[str] = (), excludes: Iterable[str] = ()) -> None:
        self._includes = frozenset(includes)
        self._excludes = frozenset(excludes)

    @classmethod
    def validated(cls, includes: Iterable[str] = (), excludes: Iterable[str] = ()) -> IncludesExcludes:
        inc, exc = list(includes), list(excludes)
        errors = validate_includes_excludes(inc, exc)
        if errors:
            raise FilterValidationError(errors)
        return cls(inc, exc)

    @property
    def includes(self) -> list[str]:
        return sorted(self._includes)

    @property
    def excludes(self) -> list[str]:
        return sorted(self._excludes)

    def should_include(self, item: str) -> bool:
        if WILDCARD in self._excludes or item in self._excludes:
            return False
        return not self._includes or WILDCARD in self._includes or item in self._includes

    def include_everything(self) -> bool:
        """True when nothing is excluded and the includes are empty or just "*"."""
        return not self._excludes and (not self._includes or self._includes == {WILDCARD})

    def includes_string(self) -> str:
        return ", ".join(self.includes) or WILDCARD

    def excludes_string(self) -> str:
        return ", ".join(self.excludes) or "<none>"

    def __repr__(self) -> str:
        return f"IncludesExcludes(includes={self.includes!r}, excludes={self.excludes!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IncludesExcludes):
            return NotImplemented
        return (self._includes, self._excludes) == (other._includes, other._excludes)

    def __hash__(self) -> int:
        return hash((self._includes, self._excludes))


# --------------------------------------------------------------------------- resource resolution


def split_group_resource(gr: str) -> tuple[str, str]:
    """Go's `ParseGroupResource`: "deployments.apps" -> ("deployments", "apps"), split at the first dot."""
    resource, _, group = gr.partition(".")
    return resource, group


class ResourceResolver:
    """Resolves user-facing resource names to group-resource strings using discovery.

    Accepted forms (case-insensitive): plural ("deployments"), `plural.group`
    ("deployments.apps"), kind ("Deployment") and the short names discovery reports ("deploy"),
    each optionally qualified with a group ("deploy.apps"). A plural match beats a kind match,
    which beats a short name. When a bare name matches several groups, the core group wins, then
    groups in discovery order with the legacy "extensions" group last.
    """

    def __init__(self, resources: Iterable[Resource]) -> None:
        self._resources: list[Resource] = list(resources)
        self._known = {r.group_resource for r in self._resources}

    @property
    def group_resources(self) -> list[str]:
        return [r.group_resource for r in self._resources]

    def knows(self, gr: str) -> bool:
        return gr in self._known

    def resource_for(self, gr: str) -> Resource | None:
        for res in self._resources:
            if res.group_resource == gr:
                return res
        return None

    def try_resolve(self, name: str) -> str | None:
        text = name.strip().lower()
        if not text:
            return None
        if text in self._known:
            return text
        resource, group = split_group_resource(text)
        best: tuple[int, int, str] | None = None
        for index, res in enumerate(self._resources):
            if group and res.group.lower() != group:
                continue
            if res.plural.lower() == resource:
                how = 0
            elif res.kind.lower() == resource:
                how = 1
            elif resource in (s.lower() for s in res.short_names):
                how = 2
            else:
                continue
            if res.group == "":
                rank = -1
            elif res.group == "extensions":
                rank = len(self._resources) + index
            else:
                rank = index
            candidate = (how, rank, res.group_resource)
            if best is None or candidate < best:
                best = candidate
        return best[2] if best else None

    def resolve(self, name: str) -> str:
        resolved = self.try_resolve(name)
        if resolved is None:
            raise FilterValidationError([f"unknown resource: {name}"])
        return resolved

    def includes_excludes(self, includes: Iterable[str], excludes: Iterable[str]) -> IncludesExcludes:
        """Resolve both lists and validate them; every problem is reported at once."""
        errors: list[str] = []
        resolved_in = self._resolve_list(includes, errors)
        resolved_ex = self._resolve_list(excludes, errors)
        errors = validate_includes_excludes(resolved_in, resolved_ex) + errors
        if errors:
            raise FilterValidationError(errors)
        return IncludesExcludes(resolved_in, resolved_ex)

    def _resolve_list(self, names: Iterable[str], errors: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            if name.strip() == WILDCARD:
                out.append(WILDCARD)
                continue
            resolved = self.try_resolve(name)
            if resolved is None:
                errors.append(f"unknown resource: {name}")
            else:
                out.append(resolved)
        return out


# --------------------------------------------------------------------------- label selectors

_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.match(prefix)):
        return "the prefix before '/' must be a DNS subdomain (lowercase alphanumerics, '-' and '.')"
    if not name or len(name) > 63 or not _NAME_RE.match(name):
        return (
            "the name part must be 1-63 characters of alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


def _value_problem(value: str) -> str | None:
    if value == "":
        return None
    if len(value) > 63 or not _NAME_RE.match(value):
        return (
            "a label value must be empty or 1-63 characters of alphanumerics, '-', '_' or '.', "
            "starting and ending with an alphanumeric"
        )
    return None


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # one of In, NotIn, Exists, DoesNotExist, or "=" for matchLabels entries
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "=":
            return present and labels[self.key] == self.values[0]
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist

    def __str__(self) -> str:
        if self.operator == "=":
            return f"{self.key}={self.values[0]}"
        if self.operator == "In":
            return f"{self.key} in ({','.join(sorted(self.values))})"
        if self.operator == "NotIn":
            return f"{self.key} notin ({','.join(sorted(self.values))})"
        if self.operator == "Exists":
            return self.key
        return f"!{self.key}"


class LabelSelector:
    """A validated metav1.LabelSelector. `None`/`{}` select everything (as Ark's backups do)."""

    def __init__(self, match_labels: Mapping[str, str], expressions: Sequence[Requirement]) -> None:
        self.match_labels = dict(match_labels)
        self.expressions = tuple(expressions)

    @property
    def requirements(self) -> list[Requirement]:
        reqs = [Requirement(k, "=", (v,)) for k, v in self.match_labels.items()]
        reqs.extend(self.expressions)
        return sorted(reqs, key=lambda r: r.key)  # stable, like Go's sort.Sort(ByKey)

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.expressions

    @classmethod
    def from_dict(cls, selector: Mapping[str, Any] | None) -> LabelSelector:
        if selector is None:
            return cls({}, ())
        if not isinstance(selector, Mapping):
            raise FilterValidationError(
                ["invalid label selector: must be an object with matchLabels/matchExpressions"]
            )
        errors: list[str] = []
        unknown = sorted(set(selector) - {"matchLabels", "matchExpressions"})
        if unknown:
            errors.append(f"invalid label selector: unknown field(s) {', '.join(unknown)}")
        match_labels: dict[str, str] = {}
        raw_labels = selector.get("matchLabels") or {}
        if not isinstance(raw_labels, Mapping):
            errors.append("invalid label selector: matchLabels must be a map of strings")
            raw_labels = {}
        for key, value in raw_labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                errors.append(
                    f"invalid label selector: matchLabels entry {key!r} must map a string to a string"
                )
                continue
            if problem := _key_problem(key):
                errors.append(f"invalid label selector: key {key!r}: {problem}")
            if problem := _value_problem(value):
                errors.append(f"invalid label selector: value {value!r} for key {key!r}: {problem}")
            match_labels[key] = value
        expressions: list[Requirement] = []
        raw_exprs = selector.get("matchExpressions") or []
        if not isinstance(raw_exprs, list):
            errors.append("invalid label selector: matchExpressions must be a list")
            raw_exprs = []
        for expr in raw_exprs:
            req = _requirement_from_dict(expr, errors)
            if req is not None:
                expressions.append(req)
        if errors:
            raise FilterValidationError(errors)
        return cls(match_labels, expressions)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        """Parse the CLI form, e.g. ``a=b,c!=d,e in (x,y),f notin (z),g,!h``."""
        return cls.from_dict(parse_label_selector(text))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.expressions
            ]
        return out

    def to_query(self) -> str:
        """The `labelSelector` query parameter for list/watch; "" selects everything."""
        return ",".join(str(r) for r in self.requirements)

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        lbls = labels or {}
        return all(r.matches(lbls) for r in self.requirements)

    def __str__(self) -> str:
        return self.to_query() or "<none>"


def _requirement_from_dict(expr: object, errors: list[str]) -> Requirement | None:
    if not isinstance(expr, Mapping):
        errors.append("invalid label selector: each matchExpressions entry must be an object")
        return None
    key = expr.get("key")
    op = expr.get("operator")
    values = expr.get("values") or []
    if not isinstance(key, str):
        errors.append("invalid label selector: matchExpressions entry needs a string key")
        return None
    ok = True
    if problem := _key_problem(key):
        errors.append(f"invalid label selector: key {key!r}: {problem}")
        ok = False
    if op not in _OPERATORS:
        errors.append(
            f"invalid label selector: {op!r} is not a valid label selector operator "
            f"(use one of {', '.join(_OPERATORS)})"
        )
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        errors.append(f"invalid label selector: values for key {key!r} must be a list of strings")
        return None
    if op in ("In", "NotIn") and not values:
        errors.append(f"invalid label selector: operator {op} for key {key!r} needs at least one value")
        ok = False
    if op in ("Exists", "DoesNotExist") and values:
        errors.append(f"invalid label selector: operator {op} for key {key!r} takes no values")
        ok = False
    for v in values:
        if problem := _value_problem(v):
            errors.append(f"invalid label selector: value {v!r} for key {key!r}: {problem}")
            ok = False
    return Requirement(key, op, tuple(values)) if ok else None


def label_selector_query(selector: Mapping[str, Any] | None) -> str:
    """metav1.LabelSelector dict -> list API string; raises FilterValidationError when invalid."""
    return LabelSelector.from_dict(selector).to_query()


# ---- CLI selector parser

_TOKEN_RE = re.compile(r"\s*(?:(?P<op>!=|==|=|!|\(|\)|,)|(?P<ident>[^\s,=!()]+))")


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterValidationError([f"invalid label selector {text!r}: unexpected character at {pos}"])
        tokens.append(m.group("op") or m.group("ident"))
        pos = m.end()
    return tokens


_SPECIAL = {"!=", "==", "=", "!", "(", ")", ","}


def parse_label_selector(text: str) -> dict[str, Any]:
    """Parse ``a=b,c!=d,e in (x,y),f notin (z),g,!h`` into a metav1.LabelSelector dict.

    `=`/`==` go to matchLabels, `!=` becomes NotIn with one value, a bare key is Exists and
    `!key` is DoesNotExist. An empty string selects everything (``{}``).
    """
    tokens = _tokenize(text)
    match_labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    i = 0

    def fail(msg: str) -> FilterValidationError:
        return FilterValidationError([f"invalid label selector {text!r}: {msg}"])

    def ident(at: int, what: str) -> str:
        if at >= len(tokens) or tokens[at] in _SPECIAL:
            found = repr(tokens[at]) if at < len(tokens) else "end of input"
            raise fail(f"expected {what}, found {found}")
        return tokens[at]

    while i < len(tokens):
        if tokens[i] == "!":
            key = ident(i + 1, "a label key after '!'")
            expressions.append({"key": key, "operator": "DoesNotExist"})
            i += 2
        else:
            key = ident(i, "a label key")
            i += 1
            nxt = tokens[i] if i < len(tokens) else None
            if nxt is None or nxt == ",":
                expressions.append({"key": key, "operator": "Exists"})
            elif nxt in ("=", "==", "!="):
                i += 1
                value = ""
                if i < len(tokens) and tokens[i] not in _SPECIAL:
                    value = tokens[i]
                    i += 1
                if nxt == "!=":
                    expressions.append({"key": key, "operator": "NotIn", "values": [value]})
                elif key in match_labels and match_labels[key] != value:
                    raise fail(f"key {key!r} is required to equal both {match_labels[key]!r} and {value!r}")
                else:
                    match_labels[key] = value
            elif nxt in ("in", "notin"):
                i += 1
                if i >= len(tokens) or tokens[i] != "(":
                    raise fail(f"expected '(' after {nxt!r} for key {key!r}")
                i += 1
                values: list[str] = []
                while True:
                    values.append(ident(i, f"a value in the {nxt!r} list for key {key!r}"))
                    i += 1
                    if i < len(tokens) and tokens[i] == ",":
                        i += 1
                        continue
                    if i < len(tokens) and tokens[i] == ")":
                        i += 1
                        break
                    raise fail(f"expected ',' or ')' in the {nxt!r} list for key {key!r}")
                operator = "In" if nxt == "in" else "NotIn"
                expressions.append({"key": key, "operator": operator, "values": values})
            else:
                raise fail(
                    f"unexpected {nxt!r} after key {key!r}: expected '=', '==', '!=', 'in', 'notin' or ','"
                )
        if i < len(tokens):
            if tokens[i] != ",":
                raise fail(f"expected ',' before {tokens[i]!r}")
            i += 1
            if i >= len(tokens):
                raise fail("trailing ','")
    out: dict[str, Any] = {}
    if match_labels:
        out["matchLabels"] = match_labels
    if expressions:
        out["matchExpressions"] = expressions
    # Validate keys and values now so the CLI reports them before anything is created.
    LabelSelector.from_dict(out)
    return out


@dataclass(frozen=True)
class SpecFilters:
    """What Backup and Restore specs both select by: namespaces, resources and a label selector."""

    namespaces: IncludesExcludes
    resources: IncludesExcludes
    selector: LabelSelector


def spec_filters(
    spec: Mapping[str, Any], resources: Sequence[Resource], errors: list[str]
) -> SpecFilters:
    """The filters of a Backup or Restore `spec` (raw JSON), resolved against the cluster's
    `resources`; every problem is appended to `errors` so the user sees them all at once."""
    ns_in = [str(n) for n in spec.get("includedNamespaces") or []]
    ns_ex = [str(n) for n in spec.get("excludedNamespaces") or []]
    errors.extend(
        f"invalid includedNamespaces/excludedNamespaces: {e}" for e in validate_includes_excludes(ns_in, ns_ex)
    )
    resource_filter = IncludesExcludes()
    try:
        resource_filter = ResourceResolver(resources).includes_excludes(
            [str(r) for r in spec.get("includedResources") or []],
            [str(r) for r in spec.get("excludedResources") or []],
        )
    except FilterValidationError as exc:
        errors.extend(
            e if e.startswith("unknown resource") else f"invalid includedResources/excludedResources: {e}"
            for e in exc.errors
        )
    selector = LabelSelector({}, ())
    try:
        selector = LabelSelector.from_dict(spec.get("labelSelector"))
    except FilterValidationError as exc:
        errors.extend(exc.errors)
    return SpecFilters(IncludesExcludes(ns_in, ns_ex), resource_filter, selector)
