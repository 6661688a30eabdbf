"""griffe extension: read caskax's ``Example:`` docstring sections as examples.

caskax docstrings write ``Example:`` followed by ``>>>`` doctest lines (run by pytest's
``--doctest-modules``). griffe's Google parser treats a singular ``Example:`` as a
free-text admonition, where ``>>>`` would render as nested quotes; read as an
``Examples:`` section, each doctest becomes a highlighted code block.
"""

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", flags=re.M)


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        doc = obj.docstring
        if doc is not None and "Example:" in doc.value:
            doc.value = _EXAMPLE.sub(r"\1Examples:", doc.value)
