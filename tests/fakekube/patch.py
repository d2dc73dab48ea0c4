"""The three PATCH formats the API server accepts for JSON bodies.

* JSON merge patch (RFC 7386): ``null`` deletes a key, lists are replaced.
* Strategic merge patch: a merge patch in which lists the Go types tag
  ``patchStrategy=merge`` are merged instead of replaced. That difference matters to
  callers: ``{"metadata": {"finalizers": ["b"]}}`` *adds* ``b`` to the finalizers on a
  real server rather than replacing the list, so the fake does the same. The directives
  ``$patch: delete|replace`` and ``$deleteFromPrimitiveList/<field>`` are honoured;
  ``$setElementOrder`` and ``$retainKeys`` are accepted and ignored. Custom resources
  reject it (415), as the real server does.
* JSON patch (RFC 6902): ``add``, ``remove``, ``replace``, ``move``, ``copy``, ``test``.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.fakekube.status import ApiError

# Field name -> merge key for lists tagged patchStrategy=merge in k8s.io/api ("" means a
# list of primitives merged as a set). Keyed by field name alone: good enough for the
# object shapes these tests use.
MERGE_KEYS = {
    "finalizers": "",
    "ownerReferences": "uid",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "env": "name",
    "imagePullSecrets": "name",
    "conditions": "type",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in value]
        elif key.startswith("$"):
            continue  # $setElementOrder, $retainKeys: ordering hints only
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, list) and key in MERGE_KEYS and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, MERGE_KEYS[key])
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(current: list[Any], patch: list[Any], merge_key: str) -> list[Any]:
    if not merge_key:
        return list(current) + [v for v in patch if v not in current]
    out = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            out.append(copy.deepcopy(item))
            continue
        index = next(
            (
                i
                for i, old in enumerate(out)
                if isinstance(old, dict) and old.get(merge_key) == item[merge_key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                out.pop(index)
        elif index is None:
            out.append(copy.deepcopy(item))
        else:
            out[index] = strategic_merge_patch(out[index], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _bad_patch(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _bad_patch(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def _container(doc: Any, parts: list[str]) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    node = doc
    for part in _pointer(path):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent, last = _container(doc, parts)
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(value))
    else:
        parent[last] = copy.deepcopy(value)
    return doc


def _remove(doc: Any, path: str) -> Any:
    parent, last = _container(doc, _pointer(path))
    if isinstance(parent, list):
        parent.pop(int(last))
    else:
        del parent[last]
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902; a failed ``test`` or a missing path is a 422 like the server's."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise _bad_patch(
                f"the server rejected our request due to an error in our request: {exc}"
            ) from exc
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind, path = op.get("op"), op.get("path", "")
    if kind == "add":
        return _add(doc, path, op["value"])
    if kind == "remove":
        return _remove(doc, path)
    if kind == "replace":
        _get(doc, path)  # must exist
        return _add(_remove(doc, path), path, op["value"]) if path else copy.deepcopy(op["value"])
    if kind in ("move", "copy"):
        value = copy.deepcopy(_get(doc, op["from"]))
        if kind == "move":
            doc = _remove(doc, op["from"])
        return _add(doc, path, value)
    if kind == "test":
        if _get(doc, path) != op.get("value"):
            raise ValueError(f"testing value {path} failed")
        return doc
    raise ValueError(f"unknown patch operation {kind!r}")


def apply_patch(target: dict[str, Any], body: Any, content_type: str, *, custom: bool) -> Any:
    """Dispatch on the request's Content-Type."""
    media = content_type.split(";", maxsplit=1)[0].strip()
    if media == "application/json-patch+json":
        return json_patch(target, body)
    if media == "application/merge-patch+json":
        return merge_patch(target, body)
    if media == "application/strategic-merge-patch+json" and not custom:
        return strategic_merge_patch(target, body)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json-patch+json, application/merge-patch+json"
        f"{'' if custom else ', application/strategic-merge-patch+json'}",
    )
