"""One exception type for problems a user can fix; the CLI prints its message on one line, no traceback."""


class CadaError(Exception):
    """A user-facing error: the message names the file, line, field or flag at fault and how to fix it."""


def validation_message(e, path=None) -> str:
    """One line for a pydantic ``ValidationError``: the first problem's field (with its file and line when the
    settings came from a YAML file) and how many more there are."""
    errs = _one_member_per_union(e.errors())
    first = errs[0]
    loc = tuple(first["loc"])
    where = ".".join(map(str, loc)) or "settings"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    prefix = f"{path}:{yaml_line(path, loc)}: " if path is not None else ""
    return f"{prefix}{where}: {first['msg']}{more}"


def _looks_like_type(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none"})


def _one_member_per_union(errs: list) -> list:
    """Pydantic reports a value that fits no member of a union once per member, each location naming the member's
    type at the same position (``eval.suite.str`` and ``eval.suite.list[EvalSet].0.limit``). Keep the errors of the
    member that got furthest into the value -- for a list given where a name or a list may stand, the list's bad
    items, not "Input should be a valid string" -- with the member's name taken out of their locations. A part
    counts as a member's name only where another error names another type at the same place, so a stray key
    that merely looks like a type is still reported as itself."""
    locs = [tuple(err["loc"]) for err in errs]

    def member_at(loc: tuple) -> int | None:
        for i, part in enumerate(loc):
            if _looks_like_type(part) and any(o[:i] == loc[:i] and len(o) > i and o[i] != part
                                              and _looks_like_type(o[i]) for o in locs):
                return i
        return None

    order: list = []  # plain errors, and one slot per union (its location prefix)
    unions: dict[tuple, dict[str, list]] = {}
    for err, loc in zip(errs, locs):
        i = member_at(loc)
        if i is None:
            order.append(err)
            continue
        if loc[:i] not in unions:
            unions[loc[:i]] = {}
            order.append(loc[:i])
        unions[loc[:i]].setdefault(loc[i], []).append({**err, "loc": loc[:i] + loc[i + 1:]})
    out: list = []
    for item in order:
        if isinstance(item, tuple):
            out += max(unions[item].values(), key=lambda es: max(len(e["loc"]) for e in es))
        else:
            out.append(item)
    return out


def yaml_line(path, loc: tuple) -> int:
    """The 1-based line of the YAML node at ``loc`` (the deepest one that exists; 1 when none does)."""
    from pathlib import Path

    import yaml

    try:
        node = yaml.compose(Path(path).read_text(), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return 1
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            pair = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if pair is None:
                break
            line = pair[0].start_mark.line + 1  # the key's line (a scalar value sits on it)
            node = pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
