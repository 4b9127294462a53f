"""Tables from one column spec, rendered as text (the terminal), Markdown (dashboard notes) or HTML (the report).

The epoch table's spec (`EPOCH_COLUMNS`) lives here, so `lrsearch best`, a trial's note and the report show the
same columns with the same number formats.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from lrsearch.train.records import EpochRecord

R = TypeVar("R")


@dataclass(frozen=True)
class Column(Generic[R]):
    header: str
    value: Callable[[R], Any]  # None shows as "-"
    spec: str = ""  # format spec of a value
    align: Literal["left", "right"] = "right"

    def cell(self, row: R) -> str:
        value = self.value(row)
        return "-" if value is None else format(value, self.spec)


EPOCH_COLUMNS: tuple[Column[EpochRecord], ...] = (
    Column("epoch", lambda e: e.epoch, "d"),
    Column("train loss", lambda e: e.train_loss, ".4f"),
    Column("val loss", lambda e: e.val_loss, ".4f"),
    Column("train acc", lambda e: e.train_acc, ".4f"),
    Column("val acc", lambda e: e.val_acc, ".4f"),
    Column("LR first step", lambda e: e.lr, ".3g"),
    Column("LR last step", lambda e: e.lr_end, ".3g"),
)


# --- renderers ------------------------------------------------------------------------------------------------


def text_table(columns: Sequence[Column[R]], rows: Sequence[R], *, indent: str = "", notes: Sequence[str] = ()) -> str:
    """Columns two spaces apart, each as wide as its widest cell; `notes[i]` follows row i."""
    cells = [[column.cell(row) for column in columns] for row in rows]
    widths = [max([len(column.header), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        padded = (
            value.ljust(width) if column.align == "left" else value.rjust(width)
            for column, value, width in zip(columns, values, widths, strict=True)
        )
        return indent + "  ".join(padded)

    lines = [line([column.header for column in columns]).rstrip()]
    for n, values in enumerate(cells):
        note = notes[n] if n < len(notes) else ""
        lines.append((line(values) + note).rstrip())
    return "\n".join(lines)


def markdown_table(
    columns: Sequence[Column[R]], rows: Sequence[R], *, marked: Callable[[R], bool] = lambda _: False, mark: str = ""
) -> list[str]:
    """A GitHub-flavoured Markdown table; a `marked` row shows its first cell in bold, followed by `(mark)`."""
    lines = [
        "| " + " | ".join(column.header for column in columns) + " |",
        "|" + "|".join("---:" if column.align == "right" else ":---" for column in columns) + "|",
    ]
    for row in rows:
        values = [column.cell(row) for column in columns]
        if marked(row):
            values[0] = f"**{values[0]}**" + (f" ({mark})" if mark else "")
        lines.append("| " + " | ".join(values) + " |")
    return lines


def html_table(columns: Sequence[Column[R]], rows: Sequence[R], *, row_class: Callable[[R], str] = lambda _: "") -> str:
    """An HTML table; left-aligned columns have the CSS class `text`, rows the class `row_class` gives them."""

    def cell(tag: str, column: Column[R], value: str) -> str:
        kind = ' class="text"' if column.align == "left" else ""
        return f"<{tag}{kind}>{html.escape(value)}</{tag}>"

    head = "<thead><tr>" + "".join(cell("th", c, c.header) for c in columns) + "</tr></thead>"
    lines = ["<table>", head, "<tbody>"]
    for row in rows:
        css = row_class(row)
        attr = f' class="{css}"' if css else ""
        lines.append(f"<tr{attr}>" + "".join(cell("td", c, c.cell(row)) for c in columns) + "</tr>")
    return "\n".join([*lines, "</tbody>", "</table>"])


# --- the epoch table ------------------------------------------------------------------------------------------


def epoch_table_text(history: Sequence[EpochRecord], *, chosen: int | None, note: str = "<- best feasible") -> str:
    notes = [f"  {note}" if epoch.epoch == chosen else "" for epoch in history]
    return text_table(EPOCH_COLUMNS, history, indent="  ", notes=notes)


def epoch_table_markdown(history: Sequence[EpochRecord], *, chosen: int | None) -> list[str]:
    return markdown_table(EPOCH_COLUMNS, history, marked=lambda e: e.epoch == chosen, mark="chosen")


def epoch_table_html(history: Sequence[EpochRecord], *, chosen: int | None) -> str:
    return html_table(EPOCH_COLUMNS, history, row_class=lambda e: "chosen" if e.epoch == chosen else "")


__all__ = [
    "Column",
    "EPOCH_COLUMNS",
    "text_table",
    "markdown_table",
    "html_table",
    "epoch_table_text",
    "epoch_table_markdown",
    "epoch_table_html",
]
