"""The one Jinja environment that renders every firmware template."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from functools import lru_cache
from typing import Any

import jinja2

from edgejpq.resources import templates_dir

from codegen import literals


def c_designated(value: Any) -> str:
    """A dataclass as the body of a C designated initializer: `.field = value, ...`.

    Integers become C int literals; strings are C expressions (pointers, NULL) written as they are;
    a nested dataclass becomes a nested initializer.
    """
    if not is_dataclass(value):
        raise TypeError(f"c_designated needs a dataclass instance, got {type(value).__name__}")
    parts = []
    for f in fields(value):
        item = getattr(value, f.name)
        if is_dataclass(item):
            text = "{ " + c_designated(item) + " }"
        else:
            text = item if isinstance(item, str) else literals.c_int(int(item))
        parts.append(f".{f.name} = {text}")
    return ", ".join(parts)


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """Templates from templates_dir(), strict about undefined names, keeping each file's last newline."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(
        c_int=literals.c_int,
        c_int_array=literals.c_int_array,
        c_hex_bytes=literals.c_hex_bytes,
        c_float=literals.c_float,
        c_string=literals.c_string,
        c_comment=literals.c_comment,
        c_designated=c_designated,
    )
    return env


def render(template: str, **context: Any) -> str:
    """Render one whole-file template by its path under firmware_templates/."""
    return environment().get_template(template).render(**context)
