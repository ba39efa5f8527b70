"""mkdocs hook: ship MathJax inside the site, so formulas render offline (file:// pages, no network).

The MathJax 3 distribution comes from the ``django-static-mathjax`` wheel (the docs extra in pyproject.toml): a
verbatim copy of MathJax's ``es5/`` build, Apache-2.0 like MathJax itself, with no dependencies (Django is not
needed to read its files).  This hook adds the combined TeX→SVG component and the TeX extensions that MathJax's
``autoload`` may fetch to the build as ``javascripts/mathjax/…``, keeping the ``es5/`` layout MathJax resolves
its relative paths against.  SVG output needs no web fonts, which browsers refuse to load from file:// pages.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

PACKAGE = "mathjax"  # the import name of the django-static-mathjax distribution
TARGET = "javascripts/mathjax"  # where the files land in the site; mkdocs.yml's extra_javascript points here
COMPONENT = "tex-svg.js"
EXTRAS = ("input/tex/extensions",)  # loaded on demand by the component's autoload (\color, \cancel, ...)


def mathjax_es5() -> Path:
    """The ``es5/`` folder of the installed MathJax distribution."""
    spec = importlib.util.find_spec(PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        es5 = Path(root) / "static" / "mathjax" / "es5"
        if (es5 / COMPONENT).is_file():
            return es5
    raise PluginError(
        "MathJax is not installed: the docs ship it from the django-static-mathjax package "
        '(pip install -e ".[docs]", or `make docs`)'
    )


def on_files(files, config):
    es5 = mathjax_es5()
    sources = [es5 / COMPONENT]
    for extra in EXTRAS:
        sources.extend(sorted(p for p in (es5 / extra).rglob("*.js") if p.is_file()))
    for path in sources:
        uri = f"{TARGET}/{path.relative_to(es5).as_posix()}"
        files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
