"""The one jinja2 Environment for every rendered file (policies, units).

StrictUndefined turns a missing variable into an error; a render error names
the template and the line.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2

from reconcile.common.resources import template_dir


class TemplateError(Exception):
    pass


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(name: str, **context: Any) -> str:
    try:
        return environment().get_template(name).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{exc.filename or name}:{exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{name}: {exc.message}") from None
    except jinja2.TemplateNotFound:
        raise TemplateError(f"template {name} not found in {template_dir()}") from None
