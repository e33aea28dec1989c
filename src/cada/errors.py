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
