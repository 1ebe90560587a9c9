"""Builders for minimal, race-safe patches.

Writes are patches built from explicit fields, never a whole object rebuilt from a model
(unknown fields would be lost). Each builder adds a precondition so a write based on a stale
read is refused by the server instead of silently overwriting someone else's change:

- merge patches carry ``metadata.resourceVersion`` -> Conflict (409) when stale;
- JSON patches start with a ``test`` op -> Invalid (422) when the tested value changed
  (the API server reports any failed JSON patch operation as 422).
"""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
JsonPatch = list[dict[str, Any]]


def _resource_version(obj: Obj) -> str:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    if not rv:
        raise ValueError(
            "the object has no metadata.resourceVersion; read it from the API server (or the cache) first"
        )
    return str(rv)


def guarded_merge_patch(obj: Obj, patch: Obj) -> Obj:
    """``patch`` (a JSON merge patch) plus ``obj``'s resourceVersion, so a stale write gets Conflict."""
    metadata = dict(patch.get("metadata") or {})
    metadata["resourceVersion"] = _resource_version(obj)
    return {**patch, "metadata": metadata}


def status_merge_patch(obj: Obj, status: Obj) -> Obj:
    """Merge patch for the status subresource that fails with Conflict if ``obj`` is stale."""
    return {"metadata": {"resourceVersion": _resource_version(obj)}, "status": status}


def escape_pointer(token: str) -> str:
    """Escape one JSON-pointer path segment (RFC 6901), e.g. a label key containing '/'."""
    return token.replace("~", "~0").replace("/", "~1")


def add_finalizer_patch(obj: Obj, finalizer: str) -> JsonPatch:
    """JSON patch appending ``finalizer``; empty when it is already there.

    The list is tested first so two writers adding different finalizers cannot overwrite each other.
    """
    finalizers = (obj.get("metadata") or {}).get("finalizers")
    if finalizers:
        if finalizer in finalizers:
            return []
        return [
            {"op": "test", "path": "/metadata/finalizers", "value": list(finalizers)},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ]
    # No list yet: "add" would replace a list someone else just created, so pin the whole object.
    return [
        {"op": "test", "path": "/metadata/resourceVersion", "value": _resource_version(obj)},
        {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
    ]


def remove_finalizer_patch(obj: Obj, finalizer: str) -> JsonPatch:
    """JSON patch removing ``finalizer`` by index, guarded by a test of that index; empty if absent."""
    finalizers = (obj.get("metadata") or {}).get("finalizers") or []
    if finalizer not in finalizers:
        return []
    index = list(finalizers).index(finalizer)
    path = f"/metadata/finalizers/{index}"
    return [
        {"op": "test", "path": path, "value": finalizer},
        {"op": "remove", "path": path},
    ]
