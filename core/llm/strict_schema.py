"""An output schema reshaped into what a vendor's constrained decoding accepts.

OpenAI's strict json_schema mode and Anthropic's native `output_config.format` each take a
subset of JSON Schema: every object closed (`additionalProperties: false`), for OpenAI every
property required, and only some keywords. `for_openai` and `for_anthropic` rewrite a schema
into that subset the way the vendors' SDKs do: optional properties become required-but-nullable
(OpenAI), keywords the mode refuses move into the description so the model still reads them.
They return None when a schema cannot be expressed (an object with open extra properties, a
schema that is not an object at its root): the caller then uses a weaker mode.

Loom's own jsonschema check against the pipeline's original schema stays the authority: the
model's `null` for an optional property it had to fill is removed by `drop_filled_nulls` before
that check.
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Keywords each mode refuses (kept, as text, in the description).
_OPENAI_REFUSED = frozenset({
    "minLength", "maxLength", "patternProperties", "unevaluatedProperties", "propertyNames",
    "minProperties", "maxProperties", "unevaluatedItems", "contains", "minContains",
    "maxContains", "uniqueItems", "default", "examples", "if", "then", "else",
    "dependentRequired", "dependentSchemas", "not",
})
_ANTHROPIC_REFUSED = frozenset({
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minLength",
    "maxLength", "maxItems", "uniqueItems", "minProperties", "maxProperties", "patternProperties",
    "propertyNames", "unevaluatedProperties", "unevaluatedItems", "contains", "minContains",
    "maxContains", "if", "then", "else", "dependentRequired", "dependentSchemas", "not",
})
# Schema-valued keywords to walk into.
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_SUBSCHEMA_LISTS = ("anyOf", "prefixItems")
_MAX_DEPTH = 64


class _Inexpressible(Exception):
    pass


def for_openai(schema: dict[str, Any]) -> dict[str, Any] | None:
    return _reshape(schema, refused=_OPENAI_REFUSED, all_required=True)


def for_anthropic(schema: dict[str, Any]) -> dict[str, Any] | None:
    return _reshape(schema, refused=_ANTHROPIC_REFUSED, all_required=False)


def _reshape(schema: dict[str, Any], *, refused: frozenset[str], all_required: bool) -> dict[str, Any] | None:
    if not is_object_schema(schema):
        return None
    try:
        return _walk(copy.deepcopy(schema), refused, all_required, depth=0)
    except _Inexpressible:
        return None


def is_object_schema(schema: Any) -> bool:
    """Whether a schema's root is an object, which is all either vendor takes at the root."""
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    return kind == "object" or (kind is None and "properties" in schema)


def _walk(node: dict[str, Any], refused: frozenset[str], all_required: bool, *, depth: int) -> dict[str, Any]:
    if depth > _MAX_DEPTH:
        raise _Inexpressible
    if "oneOf" in node:
        # Exactly-one cannot be constrained; any-of is what decoding can do, and Loom's own
        # check still enforces exactly-one afterwards.
        node["anyOf"] = node.pop("oneOf")
    if "allOf" in node:
        raise _Inexpressible
    moved = {key: node.pop(key) for key in sorted(refused & node.keys())}
    if moved:
        note = "; ".join(f"{key}: {json.dumps(value, ensure_ascii=False, default=str)}"
                         for key, value in moved.items())
        node["description"] = f"{node['description']} ({note})" if node.get("description") else note
    for key in _SUBSCHEMA_MAPS:
        children = node.get(key)
        if isinstance(children, dict):
            node[key] = {name: _walk(child, refused, all_required, depth=depth + 1)
                         if isinstance(child, dict) else child for name, child in children.items()}
    for key in _SUBSCHEMA_LISTS:
        children = node.get(key)
        if isinstance(children, list):
            node[key] = [_walk(child, refused, all_required, depth=depth + 1)
                         if isinstance(child, dict) else child for child in children]
    if isinstance(node.get("items"), dict):
        node["items"] = _walk(node["items"], refused, all_required, depth=depth + 1)
    if node.get("type") == "object" or "properties" in node:
        if node.get("additionalProperties", False) is not False:
            raise _Inexpressible  # a map with open keys: constrained decoding cannot close it
        node["additionalProperties"] = False
        properties: dict[str, Any] = node.setdefault("properties", {})
        required = list(node.get("required", []))
        if all_required:
            for name, child in properties.items():
                if name not in required and isinstance(child, dict):
                    properties[name] = _nullable(child)
            node["required"] = list(properties)
        elif required:
            node["required"] = required
    return node


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    kind = node.get("type")
    if isinstance(kind, str):
        return {**node, "type": [kind, "null"]} if kind != "null" else node
    if isinstance(kind, list):
        return node if "null" in kind else {**node, "type": [*kind, "null"]}
    if "enum" in node and kind is None:
        return node if None in node["enum"] else {**node, "enum": [*node["enum"], None]}
    if "anyOf" in node:
        return {**node, "anyOf": [*node["anyOf"], {"type": "null"}]}
    return {"anyOf": [node, {"type": "null"}]}


def drop_filled_nulls(value: Any, original: dict[str, Any], *, depth: int = 0) -> Any:
    """`value` with the nulls removed that strict mode made the model write for properties the
    original schema leaves optional (and does not allow to be null)."""
    if depth > _MAX_DEPTH or not isinstance(value, dict) or not isinstance(original, dict):
        return value
    properties = original.get("properties")
    if not isinstance(properties, dict):
        return value
    required = set(original.get("required", []))
    cleaned: dict[str, Any] = {}
    for name, item in value.items():
        child = properties.get(name)
        if item is None and name not in required and not _allows_null(child):
            continue
        if isinstance(child, dict):
            if isinstance(item, dict):
                item = drop_filled_nulls(item, child, depth=depth + 1)
            elif isinstance(item, list) and isinstance(child.get("items"), dict):
                item = [drop_filled_nulls(entry, child["items"], depth=depth + 1) for entry in item]
        cleaned[name] = item
    return cleaned


def _allows_null(schema: Any) -> bool:
    if not isinstance(schema, dict) or not schema:
        return True  # no constraint: null is allowed
    kind = schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    if "enum" in schema:
        return None in schema["enum"]
    if "const" in schema:
        return schema["const"] is None
    return any(_allows_null(branch) for branch in schema.get("anyOf", []) if isinstance(branch, dict))
