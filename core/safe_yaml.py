"""The one YAML loader Loom uses for every YAML it reads (pipeline files, `--set` values,
`$LOOM_HOME/config.yaml`, schema files, the workbench's settings).

PyYAML's `safe_load` is safe against code execution but not against size: its composer recurses
once per nesting level (a 100 kB `[[[[…` is a RecursionError), its int constructor hands text
to `int()` (5,000 digits is a ValueError from Python's digit limit), aliases (`*name`) expand
without a count (a "billion laughs"), and a key written twice keeps the last silently. Every
one of these is turned into a YamlError here: one line, with the line it happened on.
"""

from __future__ import annotations

from typing import Any

import yaml

# Aliases (`*name`) may repeat what an anchor (`&name`) holds, but no more than this many nodes
# in all: nine levels of nine aliases each (a "billion laughs") would be 387 million.
MAX_YAML_NODES = 100_000
# Collections nested deeper than this are refused before the (recursive) composer reaches
# Python's recursion limit; no pipeline or schema a person writes comes near it.
MAX_YAML_DEPTH = 200
# Python refuses to convert longer decimal text to an int (sys.get_int_max_str_digits).
MAX_INT_DIGITS = 4_300

KeyLines = dict[tuple[Any, ...], int]


class YamlError(ValueError):
    """A YAML document Loom will not read: the message is one line, `line` is 1-based."""

    def __init__(self, message: str, line: int | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.key = key


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nesting depth while composing and refuses over-long ints."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                # types-PyYAML leaves Parser.peek_event unannotated (it returns an Event).
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise YamlError(f"the YAML nests more than {MAX_YAML_DEPTH} levels deep",
                                line=mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(ch.isdigit() for ch in str(node.value))
        if digits > MAX_INT_DIGITS:
            raise YamlError(f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS:,})",
                            line=node.start_mark.line + 1)
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # any other conversion Python refuses: still one line
            raise YamlError(f"not a usable integer: {exc}".splitlines()[0],
                            line=node.start_mark.line + 1) from None


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def load_yaml(text: str) -> Any:
    """The document's value. Raises YamlError (one line) for anything Loom will not read."""
    return load_yaml_with_lines(text)[0]


def load_yaml_with_lines(text: str) -> tuple[Any, KeyLines]:
    """The document's value and the line each key path is written on, from one parse.

    Raises YamlError for a syntax error, a key written twice in one mapping (naming both
    lines), nesting past MAX_YAML_DEPTH, an int past MAX_INT_DIGITS and aliases that would
    expand to more than MAX_YAML_NODES nodes; memory stays bounded (aliases are counted,
    never expanded).
    """
    loader = _BoundedLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {}
        lines = _key_lines(root)
        _check_expansion(root)
        return loader.construct_document(root), lines
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlError(f"YAML syntax error: {problem}",
                        line=mark.line + 1 if mark else None) from None
    except RecursionError:  # a last guard: the depth count should always come first
        raise YamlError(f"the YAML nests more than {MAX_YAML_DEPTH} levels deep") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node) -> None:
    """How many nodes the document would have with every alias expanded, counted once per
    distinct node (memoised), so the count itself costs no more than the document's size."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # post-order, iterative: children before their parent
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if expanded or not children:
            total = 1
            for child in children:
                total += sizes.get(id(child), 1)
                if total > MAX_YAML_NODES:
                    raise YamlError(
                        f"the YAML's aliases (*name) expand to more than {MAX_YAML_NODES:,} "
                        f"values; write the values out, or use fewer aliases",
                        line=node.start_mark.line + 1)
            sizes[id(node)] = total
            continue
        stack.append((node, True))
        for child in children:
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _key_lines(root: yaml.Node) -> KeyLines:
    """Map each key path in the YAML to the (1-based) line it is written on. An alias is not
    followed (its anchor's keys are mapped where the anchor is written), and a key written
    twice in one mapping is an error naming both lines."""
    lines: KeyLines = {}
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[Any, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue  # an alias of a node already walked
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is not None and key != "<<":
                    if key in first:
                        dotted = ".".join(str(p) for p in path + (key,))
                        raise YamlError(
                            f"the key is written twice, on line {first[key]} and line {line} "
                            f"(YAML would keep the last silently); keep one",
                            line=line, key=dotted)
                    first[key] = line
                child = path + (key,)
                lines[child] = line
                stack.append((value_node, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                child = path + (index,)
                lines[child] = item.start_mark.line + 1
                stack.append((item, child))
    return lines
