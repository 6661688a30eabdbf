"""mkdocs hook: publish the tutorial notebooks of ``notebooks/`` on the site.

The notebooks live outside ``docs/`` because the test suite executes them there (nbmake).
This hook adds them to the site's files as ``notebooks/<name>.ipynb`` before
mkdocs-jupyter converts them (it runs first thanks to its higher priority). They are
rendered as stored, never executed at build time.
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
