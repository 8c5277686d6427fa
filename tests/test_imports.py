"""Every module of the package imports first, on its own (no circular import depends on import order)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import distillkit


def test_every_module_imports_first_in_a_fresh_package():
    names = sorted(m.name for m in pkgutil.walk_packages(distillkit.__path__, "distillkit."))
    names = [n for n in names if not n.endswith("__main__")]
    assert "distillkit.methods.kd" in names and "distillkit.models.pair" in names
    failures = {}
    saved = {k: v for k, v in sys.modules.items() if k == "distillkit" or k.startswith("distillkit.")}
    try:
        for name in names:
            for key in [k for k in sys.modules if k == "distillkit" or k.startswith("distillkit.")]:
                del sys.modules[key]
            try:
                importlib.import_module(name)
            except ImportError as err:  # a circular import shows up as an ImportError
                failures[name] = str(err)
    finally:
        for key in [k for k in sys.modules if k == "distillkit" or k.startswith("distillkit.")]:
            del sys.modules[key]
        sys.modules.update(saved)
    assert not failures, failures
