"""The installed dependencies lie in the range pyproject.toml declares.

CI tests both ends of that range (the newest releases and `.ci/oldest.txt`); a version outside it
would mean the suite passes on something the project does not claim, or claims what it did not test.
So this fails loudly, never skips: every requirement of the library and of the `test` extra must be
installed and inside its specifier, and any optional extra that is installed must be inside its own.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
REQUIRED_EXTRAS = ("test",)  # what the README's test command installs


def declared_requirements() -> dict[str, list[Requirement]]:
    """pyproject.toml's requirements by group: "" for the library, else the extra's name. Read from the
    file, not the installed metadata, so an install made before the file changed cannot hide a change."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata is the next best source
        return _from_metadata()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    return {
        group: [Requirement(r) for r in reqs if not Requirement(r).name.startswith("peftkit")]
        for group, reqs in groups.items()
    }


def _from_metadata() -> dict[str, list[Requirement]]:
    groups: dict[str, list[Requirement]] = {}
    for line in importlib.metadata.requires("peftkit") or []:
        requirement = Requirement(line)
        extra = ""
        if requirement.marker is not None:
            extra = next((e for e in _extras() if requirement.marker.evaluate({"extra": e})), "")
        requirement.marker = None
        groups.setdefault(extra, []).append(requirement)
    return groups


def _extras() -> list[str]:
    return importlib.metadata.metadata("peftkit").get_all("Provides-Extra") or []


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def range_problems(
    groups: dict[str, list[Requirement]],
    required: tuple[str, ...] = ("", *REQUIRED_EXTRAS),
    installed: Callable[[str], str | None] = _installed,
) -> list[str]:
    """One line per requirement that is violated: missing (for a required group) or installed at a
    version its specifier excludes (any group)."""
    problems = []
    for group, requirements in groups.items():
        for requirement in requirements:
            version = installed(requirement.name)
            where = f"peftkit[{group}]" if group else "peftkit"
            if version is None:
                if group in required:
                    problems.append(f"{requirement.name} is not installed ({where} needs {requirement})")
            elif not requirement.specifier.contains(Version(version).public, prereleases=True):
                problems.append(
                    f"{requirement.name} {version} is installed, outside the declared {where} range "
                    f"{requirement}: install a version in range, or test the new version and move the bound"
                )
    return problems


def test_installed_dependencies_are_in_the_declared_range():
    problems = range_problems(declared_requirements())
    assert not problems, "\n".join(problems)


def test_the_ranges_ci_tests_have_floors_for_transformers_accelerate_and_trl():
    """.ci/oldest.txt pins exactly the declared floors, so the low-end environment is the low end."""
    pins = {}
    for line in (ROOT / ".ci" / "oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name] = str(requirement.specifier).removeprefix("==")
    floors = {}
    for requirements in declared_requirements().values():
        for requirement in requirements:
            for spec in requirement.specifier:
                if spec.operator == ">=":
                    floors[requirement.name] = spec.version
    assert {"transformers", "accelerate", "trl"} <= set(pins)
    for name, pinned in pins.items():
        assert name in floors and Version(floors[name]) == Version(pinned), (
            f"{name}: .ci/oldest.txt pins {pinned}, the declared floor is {floors.get(name)}"
        )


# The checker itself, on a made-up installation: it must report what is wrong, not only pass.
GROUPS = {
    "": [Requirement("transformers>=5.18"), Requirement("torch>=2.13")],
    "test": [Requirement("trl>=1.0")],
    "plot": [Requirement("matplotlib>=3.7")],
}


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        (
            {"transformers": "5.17.0", "torch": "2.13.0+cpu", "trl": "1.0.0"},
            ["transformers 5.17.0 is installed"],
        ),
        (
            {"transformers": "5.25.0", "torch": "2.13.0+cpu"},
            ["trl is not installed (peftkit[test] needs trl>=1.0)"],
        ),
        (
            {"transformers": "5.25.0", "torch": "2.13.0", "trl": "1.16.0", "matplotlib": "3.6.0"},
            ["matplotlib 3.6.0 is installed, outside the declared peftkit[plot] range"],
        ),
        ({"transformers": "6.0.0rc1", "torch": "2.15.0", "trl": "1.0.0"}, []),
    ],
)
def test_the_checker_reports_missing_and_out_of_range_versions(installed, expected):
    problems = range_problems(GROUPS, installed=installed.get)
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected):
        assert problem.startswith(start), problem


def test_an_optional_extra_that_is_not_installed_is_not_a_problem():
    assert range_problems(GROUPS, installed={"transformers": "5.18", "torch": "2.13", "trl": "1.0"}.get) == []
