"""Every example in the library's docstrings runs and shows what it says (examples that need a
GPU, data or a long run are marked ``# doctest: +SKIP`` where they stand)."""

import doctest
import importlib
import pkgutil

import pytest

import dra_dali

MODULES = sorted(m.name for m in pkgutil.walk_packages(dra_dali.__path__, "dra_dali."))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed"


def test_the_package_has_examples():
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES
                   for t in finder.find(importlib.import_module(name)))
    assert examples >= 60
