"""mkdocs hook: publish the tutorial notebooks of ``notebooks/`` on the site.

The notebooks live outside ``docs/`` because the test suite executes them there (nbmake).
This hook adds them to the site's files as ``notebooks/<name>.ipynb`` before
mkdocs-jupyter converts them (it runs first thanks to its higher priority).

Whether they are executed is mkdocs-jupyter's ``execute`` option, which mkdocs.yml reads
from the environment variable ``CASKAX_DOCS_EXECUTE`` (unset, as in a plain ``mkdocs
build``: ``false``, and the pages show the notebooks as stored, without outputs).
``./run docs`` sets it to ``true`` unless it is already set, so that build runs every
tutorial and its pages show their outputs; the rendered pages are cached in
``.venv/mkdocs-jupyter-cache`` by notebook content, so a rebuild runs only the notebooks
that changed. ``CASKAX_DOCS_EXECUTE=false ./run docs`` builds quickly without executing
them.
"""

import pathlib

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[1]


@event_priority(100)
def on_files(files, config):
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        files.append(
            File(
                f"notebooks/{nb.name}",
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
