"""One exception type for problems a user can fix; the CLI prints its message on one line, no traceback."""


class CadaError(Exception):
    """A user-facing error: the message names the file, line, field or flag at fault and how to fix it."""


def read_yaml_file(path) -> object:
    """A YAML config file's content ({} when empty), with one-line errors naming the file (and line)."""
    from pathlib import Path

    import yaml

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise CadaError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CadaError(f"{path}:{mark.line + 1 if mark else 0}: malformed YAML") from None


def validation_message(e, path=None) -> str:
    """One line for a pydantic ``ValidationError``: the first problem's field (with its file and line when the
    settings came from a YAML file) and how many more there are."""
    errs = _one_per_union(e.errors())
    first = errs[0]
    loc = tuple(p for p in first["loc"] if not _type_tag(p))
    where = ".".join(map(str, loc)) or "settings"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    prefix = f"{path}:{yaml_line(path, loc)}: " if path is not None else ""
    return f"{prefix}{where}: {first['msg']}{more}"


def _type_tag(part) -> bool:
    """Whether a location part names a union member (``str``, ``list[EvalSet]``), not a field."""
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "none"})


def _one_per_union(errs: list) -> list:
    """Pydantic reports a value that fits no member of a union once per member, each location tagged with the
    member's type. Keep the member that got furthest into the value: for a list given where a name or a list may
    stand, the list's bad item, not "Input should be a valid string"."""
    kept: list = []
    where: dict = {}
    for err in errs:
        loc = tuple(err["loc"])
        cut = next((i for i, p in enumerate(loc) if _type_tag(p)), None)
        if cut is None:
            kept.append(err)
        elif loc[:cut] not in where:
            where[loc[:cut]] = len(kept)
            kept.append(err)
        elif len(loc) > len(kept[where[loc[:cut]]]["loc"]):
            kept[where[loc[:cut]]] = err
    return kept


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
