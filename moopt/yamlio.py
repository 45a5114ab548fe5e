"""YAML and JSON helpers: reading user files with one-line errors, writing files atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from moopt.errors import ConfigError

_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping (two ``training:`` sections, or
    ``learning_rate`` twice) is an error: PyYAML keeps the last one silently, dropping what the first said."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *anchor" merges, as YAML means it to
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                hash(key)
            except TypeError:
                continue  # the base constructor says what is wrong with an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"`{key}` is given twice (lines {seen[key].line + 1} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        """YAML 1.1 reads ``010`` as octal (8) and ``1:30`` as base 60 (90), where a user meant 10 or a time: an
        error naming the line, not a silently different number."""
        raw = str(self.construct_scalar(node)).replace("_", "")
        sign, text = ("-" if raw.startswith("-") else ""), raw.lstrip("+-")
        if ":" in text:
            raise yaml.constructor.ConstructorError(
                None, None, f"`{node.value}` is a base-60 number in YAML 1.1 ({int(super().construct_yaml_int(node))}): "
                "quote it, or write the number you mean", node.start_mark)
        if len(text) > 1 and text[0] == "0" and text[1:].isdigit():
            raise yaml.constructor.ConstructorError(
                None, None, f"`{node.value}` is an octal number in YAML 1.1 (a leading 0): write "
                f"{sign}{text.lstrip('0') or '0'}, or quote it", node.start_mark)
        return super().construct_yaml_int(node)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Load a YAML file that must hold a mapping; every failure is a ConfigError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temp file + rename, so a crash never leaves a half-written file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_with(path, write)


def atomic_write_with(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` fills a temporary file next to ``path``, which is then renamed onto it: a crash
    never leaves a half-written file. The file gets the mode any other result file gets (0644 under
    the usual umask; mkstemp and safetensors' save_file make 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_yaml(path: str | Path, data: Any, header: str = "") -> None:
    """``header``: text put before the YAML (comment lines, each starting with #)."""
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False))


def write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=float) + "\n")
