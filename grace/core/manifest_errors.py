"""Turn YAML and pydantic failures into messages that name the file, line and field."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

Issue = tuple[int, str, str]  # (line, field path, message)
LineOf = Callable[[tuple[Any, ...]], int]
# A real manifest expands to a few hundred values; an alias bomb (each level aliasing the
# previous one several times) to billions, which pydantic would then walk one by one.
MAX_EXPANDED_NODES = 100_000


class ManifestError(ValueError):
    """grace.yaml is unreadable or invalid; str() is the full message for the user."""

    def __init__(self, file_name: str, issues: list[Issue]):
        self.file_name = file_name
        self.issues = issues
        lines = [f"{file_name} is not a valid Grace manifest:"]
        for line, field, message in sorted(issues, key=lambda issue: issue[0]):
            where = f"{file_name}:{line}" if line else file_name
            lines.append(f"  {where}: {field}: {message}")
        super().__init__("\n".join(lines))


def read_yaml_with_lines(text: str, file_name: str) -> tuple[Any, LineOf]:
    """Parse YAML once, keeping the node tree so that a field path maps back to its line."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lambda loc: 1
        _check_nodes(node, file_name)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark else 0
        problem = " ".join(part for part in (error.context, error.problem) if part)
        raise ManifestError(file_name, [(line, "(yaml)", f"{problem}; fix the YAML syntax")]) from None
    except yaml.YAMLError as error:
        raise ManifestError(file_name, [(0, "(yaml)", str(error))]) from None
    except RecursionError:
        raise ManifestError(file_name, [(0, "(yaml)", "nested too deeply; flatten the lists and mappings")]) from None
    finally:
        loader.dispose()
    return data, lambda loc: _line_of(node, loc)


def _check_nodes(root: yaml.Node, file_name: str) -> None:
    """Reject duplicate keys, aliases that refer to themselves, and aliases that expand past
    MAX_EXPANDED_NODES values. Each node object is visited once, however often it is aliased,
    and its expanded size is computed from its children's, so an alias bomb costs its text's size.
    """
    expanded: dict[int, int] = {}  # id(node) -> values it stands for once every alias is expanded
    open_nodes: set[int] = set()  # nodes whose children are still being walked
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_walked = stack.pop()
        children = _children(node)
        if children_walked:
            open_nodes.discard(id(node))
            expanded[id(node)] = 1 + sum(expanded[id(child)] for child in children)
            if expanded[id(node)] > MAX_EXPANDED_NODES:
                message = (
                    f"aliases expand too far (over {MAX_EXPANDED_NODES:,} values once expanded); "
                    "write the values out or alias them fewer times"
                )
                raise ManifestError(file_name, [(node.start_mark.line + 1, "(yaml)", message)])
            continue
        if id(node) in expanded:
            continue
        if id(node) in open_nodes:
            message = "an alias refers to a value that contains it, so it never ends; remove the cycle"
            raise ManifestError(file_name, [(node.start_mark.line + 1, "(yaml)", message)])
        if isinstance(node, yaml.MappingNode):
            _reject_duplicate_keys(node, file_name)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children))  # popped in document order


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _reject_duplicate_keys(node: yaml.MappingNode, file_name: str) -> None:
    seen: dict[Any, int] = {}
    for key, _value in node.value:
        if isinstance(key, yaml.ScalarNode) and key.value in seen:
            line = key.start_mark.line + 1
            raise ManifestError(
                file_name,
                [(line, key.value, f"duplicate key (first at line {seen[key.value]}); keep one")],
            )
        seen[getattr(key, "value", None)] = key.start_mark.line + 1


def _line_of(node: yaml.Node, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest node that the path reaches (the key's line for a mapping key)."""
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line, child = key.start_mark.line + 1, value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def field_path(loc: tuple[Any, ...]) -> str:
    """('sources', 0, 'path') -> 'sources[0].path'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def validation_issues(error: ValidationError, line_of: LineOf, root: type[BaseModel]) -> list[Issue]:
    """One issue per pydantic error, with a hint drawn from the schema itself."""
    issues = []
    for detail in error.errors():
        loc = tuple(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            allowed = sorted(_model_at(root, loc[:-1]).model_fields)
            message = f"unknown key; allowed here: {', '.join(allowed)}"
        else:
            hint = _description_of(root, loc)
            if detail["type"] == "missing":
                message = "required"
            if hint:
                message += f" (expected: {hint})"
        issues.append((line_of(loc), field_path(loc), message))
    return issues


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = _inner_model(field.annotation) if field else None
        if inner is None:
            break
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _inner_model(argument)
        if found:
            return found
    return None


def _description_of(root: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    names = [part for part in loc if isinstance(part, str)]
    if not names:
        return None
    parent = _model_at(root, tuple(names[:-1]))
    field = parent.model_fields.get(names[-1])
    return field.description if field else None
