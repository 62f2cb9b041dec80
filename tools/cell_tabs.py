"""A Sphinx extension that shows a PyTorch cell and its TensorFlow twin as synced tabs.

A chapter teaches an algorithm from scratch in both frameworks: two *executed* code cells,
one after the other, the first tagged ``tab-pytorch`` and the second ``tab-tensorflow``.
In a notebook they run one after the other. In the HTML book this extension puts the pair
in a sphinx-design tab set whose tabs are synced with every other PyTorch/TensorFlow
tab set of the book (``:sync: torch`` / ``:sync: tensorflow``), so a reader who picks
TensorFlow once sees TensorFlow everywhere.

Writing ``{code-cell}`` inside a ``tab-set`` directive does not work (MyST-NB drops
executed cells nested in directives); here the cells are parsed as usual, outputs and all,
and only moved into the tabs afterwards. A tagged cell without its twin right after it
is a build warning (an error under ``--warningiserror``).
"""

from __future__ import annotations

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.transforms import SphinxTransform
from sphinx.util import logging
from sphinx_design.shared import create_component

LOGGER = logging.getLogger(__name__)

# (cell tag, tab label, sync key): the keys the chapters' literalinclude tabs use.
FRAMEWORK_TABS = (("tab-pytorch", "PyTorch", "torch"),
                  ("tab-tensorflow", "TensorFlow", "tensorflow"))


def _tagged(node, tag: str) -> bool:
    return isinstance(node, nodes.container) and f"tag_{tag}" in node.get("classes", [])


def _tab_item(cell: nodes.Element, label: str, sync: str) -> nodes.Element:
    """The node structure that sphinx-design's ``tab-item`` directive produces."""
    item = create_component("tab-item", classes=["sd-tab-item"], selected=False)
    title = nodes.rubric(label, label, classes=["sd-tab-label"])
    title["sync_id"] = sync
    title["sync_group"] = "tab"
    content = create_component("tab-content", classes=["sd-tab-content"])
    content += cell
    item += title
    item += content
    return item


class FrameworkCellTabs(SphinxTransform):
    """Wrap each ``tab-pytorch`` cell and the ``tab-tensorflow`` cell after it in tabs."""

    default_priority = 400

    def apply(self, **kwargs) -> None:
        (first_tag, *_), (second_tag, *_) = FRAMEWORK_TABS
        for cell in list(self.document.findall(nodes.container)):
            if not _tagged(cell, first_tag):
                continue
            parent = cell.parent
            index = parent.index(cell)
            twin = parent[index + 1] if index + 1 < len(parent) else None
            if twin is None or not _tagged(twin, second_tag):
                LOGGER.warning(f"a cell tagged {first_tag!r} must be followed at once by "
                               f"its twin tagged {second_tag!r}", location=cell)
                continue
            tab_set = create_component("tab-set", classes=["sd-tab-set"])
            for member, (_, label, sync) in zip((cell, twin), FRAMEWORK_TABS):
                parent.remove(member)
                tab_set += _tab_item(member, label, sync)
            parent.insert(index, tab_set)
        for cell in self.document.findall(nodes.container):
            if _tagged(cell, second_tag) and not isinstance(cell.parent.parent,
                                                            nodes.container):
                LOGGER.warning(f"a cell tagged {second_tag!r} must follow its twin tagged "
                               f"{first_tag!r}", location=cell)


def setup(app: Sphinx) -> dict:
    app.add_transform(FrameworkCellTabs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
