"""Finds the files shipped with the package: templates/ and schema/.

In a checkout they are top-level folders; installed, setuptools maps them to the
packages reconcile.templates and reconcile.schema, so importlib.resources finds
them either way.
"""

from importlib.resources import files
from importlib.resources.abc import Traversable


def template_dir() -> Traversable:
    return files("reconcile.templates")


def schema_file(name: str = "roster.schema.json") -> Traversable:
    return files("reconcile.schema").joinpath(name)
