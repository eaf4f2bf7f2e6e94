"""How results look: HTML in notebooks, plain text in terminals.

Objects here carry both `_repr_html_` and a text repr, so the front end picks; services never print.
"""

from __future__ import annotations

import html
from typing import Sequence


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Table:
    """A small table shown as HTML in a notebook and aligned text elsewhere."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence[object]], empty: str = "(none)"):
        self.columns, self.rows, self.empty = list(columns), [list(map(str, r)) for r in rows], empty

    def __str__(self) -> str:
        if not self.rows:
            return self.empty
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        if not self.rows:
            return f"<p>{html.escape(self.empty)}</p>"
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


class TableList(list):
    """A list (what a listing magic returns) that displays as its table.

    The magic shows the table itself (`show`), so `rows = %gcs_list …` and a script run by
    `ipython script.ipy` show it too; when the returned list is then the cell's value, IPython's
    display of it is skipped in that same cell (`_ipython_display_`), so it is not shown twice.
    """

    def __init__(self, items, table: Table):
        super().__init__(items)
        self.table = table
        self._shown_in: int | None = None  # the shell's execution count when `show` displayed it

    def show(self, shell) -> "TableList":
        """Display the table now through `shell` (HTML in notebooks, text in terminals); return self."""
        from IPython.display import display

        display(self.table)
        self._shown_in = shell.execution_count
        return self

    def _ipython_display_(self) -> None:
        from IPython import get_ipython
        from IPython.display import display

        shell = get_ipython()
        if self._shown_in is not None and shell is not None and shell.execution_count == self._shown_in:
            return  # shown by the magic in this very cell
        display(self.table)

    def _repr_html_(self) -> str:
        return self.table._repr_html_()

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self.table))


class Link:
    """A clickable link (HTML) that is also readable as text, with optional notes below it."""

    def __init__(self, url: str, label: str = "", notes: Sequence[str] = ()):
        self.url, self.label, self.notes = url, label or url, list(notes)

    def __str__(self) -> str:
        return "\n".join([f"{self.label}: {self.url}" if self.label != self.url else self.url, *self.notes])

    def _repr_html_(self) -> str:
        notes = "".join(f"<br><span>{html.escape(n)}</span>" for n in self.notes)
        return (f'<a href="{html.escape(self.url)}" target="_blank" rel="noopener">'
                f"{html.escape(self.label)}</a>{notes}")

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def show(obj) -> None:
    """Display `obj` through IPython when available (HTML in notebooks), else print its text."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        print(obj)
        return
    if get_ipython() is None:
        print(obj)
    else:
        display(obj)
