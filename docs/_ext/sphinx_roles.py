"""Griffe extension for the documentation site: Sphinx roles in docstrings become links.

The docstrings name other objects the Sphinx way (``:func:`pgd```, ``:class:`~otrobust.ot.GOTRegularizer```).
Each role becomes a cross-reference when its target resolves from the docstring's scope, and plain code
otherwise (``torch.func.functional_call``), so that the site shows names, never role markup.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)(\(\))?`")


def _target(obj: griffe.Object, name: str, pkg: griffe.Module) -> str | None:
    """The full path of ``name`` as seen from ``obj``, or None where it is not an object of the package."""
    candidates = [name] if name.startswith(pkg.name + ".") else []
    scope: griffe.Object | None = obj
    while scope is not None:
        candidates.append(f"{scope.path}.{name}")
        scope = scope.parent
    for path in candidates:
        if not path.startswith(pkg.name + "."):
            continue
        try:
            found = pkg.get_member(path[len(pkg.name) + 1:])
            found = found.final_target if found.is_alias else found
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        return found.path if _documented(found) else None
    return None


def _documented(obj: griffe.Object) -> bool:
    """Whether the site renders ``obj``: public, with a docstring, outside the command-line package."""
    parts = obj.path.split(".")
    return (obj.docstring is not None and not any(p.startswith("_") for p in parts[1:])
            and parts[:2] != ["otrobust", "cli"])


def _walk(obj: griffe.Object, pkg: griffe.Module, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        def link(m: re.Match[str]) -> str:
            short, name, call = m.group(1), m.group(2), m.group(3) or ""
            shown = (name.rsplit(".", 1)[-1] if short else name) + call
            path = _target(obj, name, pkg)
            return f"[`{shown}`][{path}]" if path else f"`{shown}`"

        obj.docstring.value = ROLE.sub(link, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _walk(member, pkg, seen)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles once the whole package is loaded (so that every target can be resolved)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, pkg, set())
