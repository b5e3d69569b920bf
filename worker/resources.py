"""Where the shipped WSDL and JSON schemas live, in a wheel and in a source checkout alike."""

from __future__ import annotations

from pathlib import Path

from worker.errors import GatewayError

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    # A wheel carries the files under worker/_data/; a source checkout has them at the top level.
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise GatewayError(f"the package's {name}/ directory is missing (looked in worker/_data/{name} and ./{name})")


def wsdl_path(filename: str) -> Path:
    """Path of one of the project's own WSDL/XSD files."""
    return _data_dir("wsdl") / filename


def schema_path(filename: str) -> Path:
    """Path of one of the project's JSON schemas."""
    return _data_dir("schemas") / filename
