"""The epoch table: one column spec, rendered as text, Markdown and HTML with the same cells."""

from __future__ import annotations

import math
import re

from lrsearch.review.tables import EPOCH_COLUMNS, epoch_table_html, epoch_table_markdown, epoch_table_text
from lrsearch.train.records import EpochRecord

HISTORY = (
    EpochRecord(1, 0.71, 0.89, 0.42, 0.899, 0.00122, 0.00219, 1.0),
    EpochRecord(2, 0.39, 0.906, 0.34, 0.911, 0.00219, 0.00316, 1.0),
    EpochRecord(3, math.nan, 0.1, math.inf, 0.098, 0.9, 0.9, 1.0),  # diverged
)
HEADERS = [column.header for column in EPOCH_COLUMNS]


def test_text_markdown_and_html_show_the_same_columns_and_cells() -> None:
    text = epoch_table_text(HISTORY, chosen=2).splitlines()
    markdown = epoch_table_markdown(HISTORY, chosen=2)
    html = epoch_table_html(HISTORY, chosen=2)

    assert re.split(r"\s{2,}", text[0].strip()) == HEADERS
    assert markdown[0] == "| " + " | ".join(HEADERS) + " |"
    assert re.findall(r"<th>(.*?)</th>", html) == HEADERS

    text_rows = [line.replace("<- best feasible", "").split() for line in text[1:]]
    markdown_rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown[2:]]
    html_rows = [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr.*?</tr>", html)[1:]]
    expected = [[column.cell(epoch) for column in EPOCH_COLUMNS] for epoch in HISTORY]
    assert text_rows == html_rows == expected
    assert markdown_rows == [expected[0], ["**2** (chosen)", *expected[1][1:]], expected[2]]
    assert expected[2][1:3] == ["nan", "inf"] and expected[0][5:] == ["0.00122", "0.00219"]


def test_the_chosen_epoch_is_marked_in_each_format() -> None:
    text = epoch_table_text(HISTORY, chosen=2).splitlines()
    assert [line.endswith("<- best feasible") for line in text] == [False, False, True, False]
    assert len({len(line) for line in text[:2] + text[3:]}) == 1  # the columns line up
    assert '<tr class="chosen"><td>2</td>' in epoch_table_html(HISTORY, chosen=2)
    assert 'class="chosen"' not in epoch_table_html(HISTORY, chosen=None)
