"""Markdown tables: readable in a terminal, pasteable into the README."""

from __future__ import annotations

from typing import Sequence


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
  """A Markdown table with padded columns.

  Args:
    headers: column titles.
    rows: cells, already formatted as strings, one sequence per row.
    numeric: per column, whether to right-align it.

  Returns:
    The table, lines joined by newlines.
  """
  widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]

  def line(cells: Sequence[str]) -> str:
    padded = (cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(cells, widths, numeric))
    return '| ' + ' | '.join(padded) + ' |'

  rule = '|' + '|'.join('-' * (w + 1) + ':' if right else '-' * (w + 2) for w, right in zip(widths, numeric)) + '|'
  return '\n'.join([line(headers), rule, *(line(row) for row in rows)])
