"""The `peft` alias: `import peft` and `import peft.<sub>` give peftkit, and the metadata of a `peft`
distribution is there for version checks.

Only the standard library is imported here, so that a `.pth` file can install the alias at interpreter
start without importing torch (see `peftkit.compat.__main__`); peftkit itself is imported when `peft`
first is.

- `peft` is a small module of its own: `peft.__version__` is the PEFT version peftkit is compatible
  with (with a `+peftkit.<version>` label), every other attribute is peftkit's.
- `peft.<sub>` is the module `peftkit.<sub>` itself (the same classes: `isinstance` checks hold).
- `importlib.metadata.version("peft")` answers the same version.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings
from importlib.metadata import Distribution, DistributionFinder, version
from typing import Any

# The PEFT version the alias reports. peftkit follows peft 0.21.2's API and files, and also takes the cache
# argument under transformers 5.24's name (`cache`, formerly `past_key_values`). transformers 5.24 raised its
# gate (`MIN_PEFT_VERSION`) from 0.20.0 to 0.22.0 for that rename and nothing else in its PEFT integration
# changed, so 0.22.0 is the gate peftkit truly passes. A later, higher gate stands for something not yet
# checked: the alias then reports too low and transformers refuses it, as it should.
PEFT_COMPAT_VERSION = "0.22.0"
ENV_SWITCH = "PEFTKIT_PEFT_ALIAS"  # "0" keeps an environment-wide (.pth) alias off for one process


class PeftAliasError(RuntimeError):
    """The `peft` alias cannot be installed (the real `peft` is importable, or it is too late)."""


def _peftkit_version() -> str:
    try:
        return version("peftkit")
    except Exception:
        return ""


def alias_version() -> str:
    """The version the alias reports for `peft`: e.g. `0.22.0+peftkit.0.1.0`."""
    own = _peftkit_version()
    return f"{PEFT_COMPAT_VERSION}+peftkit.{own}" if own else PEFT_COMPAT_VERSION


def _top_module() -> types.ModuleType:
    """The `peft` module: peftkit's namespace with PEFT's version."""
    import peftkit

    module = types.ModuleType("peft", "peftkit under the name `peft` (installed by peftkit.compat).")

    def __getattr__(name: str) -> Any:
        try:
            return getattr(peftkit, name)
        except AttributeError:
            raise AttributeError(f"module 'peft' (peftkit) has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        return sorted(set(dir(peftkit)) | set(module.__dict__))

    module.__dict__.update(
        __version__=alias_version(),
        __file__=peftkit.__file__,
        __path__=[],
        __all__=list(getattr(peftkit, "__all__", [])),
        __getattr__=__getattr__,
        __dir__=__dir__,
    )
    return module


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name == "peft":
            return _top_module()
        return importlib.import_module("peftkit" + spec.name[len("peft") :])

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is peftkit's, already imported."""


class PeftAliasFinder(importlib.abc.MetaPathFinder):
    """Meta path finder mapping `peft` and `peft.X` to peftkit; also answers `peft`'s metadata."""

    _peftkit_peft_alias = True  # marks the finder (also across copies of this module)

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "peft":
            return importlib.machinery.ModuleSpec("peft", _LOADER, is_package=True)
        if not fullname.startswith("peft."):
            return None
        real = importlib.util.find_spec("peftkit" + fullname[len("peft") :])
        if real is None:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _LOADER, is_package=real.submodule_search_locations is not None
        )

    def find_distributions(self, context: Any = None):
        context = context or DistributionFinder.Context()
        name = (context.name or "").lower().replace("-", "_")
        if name == "peft" and context.path is sys.path:
            yield _distribution()


_LOADER = _AliasLoader()


def _distribution():
    class PeftAliasDistribution(Distribution):
        """The metadata of the `peft` the alias provides."""

        def read_text(self, filename: str) -> str | None:
            if filename in ("METADATA", "PKG-INFO"):
                return (
                    "Metadata-Version: 2.1\nName: peft\n"
                    f"Version: {alias_version()}\n"
                    "Summary: peftkit, importable as peft (peftkit.compat alias)\n"
                )
            if filename == "top_level.txt":
                return "peft\n"
            return None

        def locate_file(self, path: Any) -> Any:
            spec = importlib.util.find_spec("peftkit")
            root = os.path.dirname(spec.origin) if spec and spec.origin else ""
            return os.path.join(root, str(path))

    return PeftAliasDistribution()


def _is_alias_finder(finder: Any) -> bool:
    return getattr(finder, "_peftkit_peft_alias", False)


def is_installed() -> bool:
    """Whether the alias is active in this process."""
    return any(_is_alias_finder(f) for f in sys.meta_path)


def real_peft_location() -> str | None:
    """Where the real `peft` package would be imported from, or None if it is not importable."""
    loaded = sys.modules.get("peft")
    if loaded is not None and not (getattr(loaded, "__file__", None) or "").startswith(_peftkit_root()):
        return getattr(loaded, "__file__", None) or "an already imported module"
    for finder in sys.meta_path:
        if _is_alias_finder(finder) or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec("peft", None)
        except Exception:
            continue
        if spec is not None:
            return spec.origin or (list(spec.submodule_search_locations or []) or ["?"])[0]
    return None


def _peftkit_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _transformers_decided_without_peft() -> bool:
    """True when transformers already cached "peft is not available" (its Trainer then imported no PeftModel)."""
    utils = sys.modules.get("transformers.utils.import_utils")
    check = getattr(utils, "is_peft_available", None)
    info = getattr(check, "cache_info", None)
    return bool(info and info().currsize and not check())


def _clear_transformers_caches() -> None:
    utils = sys.modules.get("transformers.utils.import_utils")
    for name in ("is_peft_available", "is_peft_greater_or_equal"):
        clear = getattr(getattr(utils, name, None), "cache_clear", None)
        if clear is not None:
            clear()


def install() -> None:
    """Install the alias (idempotent); see `peftkit.compat.install_peft_alias`."""
    if is_installed():
        return
    location = real_peft_location()
    if location is not None:
        raise PeftAliasError(
            f"The real `peft` package is importable ({location}), so peftkit will not shadow it with the `peft` "
            "alias. Uninstall it (`pip uninstall peft`) to let peftkit stand in for peft, or use peftkit "
            "directly (`import peftkit`)."
        )
    if _transformers_decided_without_peft():
        raise PeftAliasError(
            "transformers has already checked for `peft` and found none, so its Trainer and adapter methods "
            "would ignore the alias. Install the alias before importing transformers (first thing in the "
            "script), or for the whole environment with `python -m peftkit.compat install`."
        )
    sys.meta_path.insert(0, PeftAliasFinder())
    _clear_transformers_caches()


def uninstall() -> None:
    """Remove the alias and forget the `peft` modules it provided."""
    sys.meta_path[:] = [f for f in sys.meta_path if not _is_alias_finder(f)]
    for name in [n for n in sys.modules if n == "peft" or n.startswith("peft.")]:
        module = sys.modules[name]
        if name == "peft" or getattr(module, "__name__", "").startswith("peftkit"):
            del sys.modules[name]
    _clear_transformers_caches()


def install_from_pth() -> None:
    """Entry point of the environment-wide `.pth` file: install unless switched off, never fail startup."""
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    try:
        install()
    except PeftAliasError as err:
        warnings.warn(f"peftkit's `peft` alias is not active: {err}", RuntimeWarning, stacklevel=2)
