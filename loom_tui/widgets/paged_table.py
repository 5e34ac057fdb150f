"""A table over a store listing too big to load: it holds one window of rows and asks for the
next page as the cursor or the scroll nears either end.

A line-API widget (the way Toolong shows millions of log lines): only the visible rows are
drawn, each once until it changes (an LRU cache of strips), and the window never holds more
than `window_size` rows however far you scroll. It does no I/O itself: it posts `PageWanted`
with the anchor row (keyset pagination) and the screen answers with `show_page`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from loom_tui.messages import PageWanted

Direction = Literal["first", "after", "before", "last"]


@dataclass(frozen=True, slots=True)
class Column:
    label: str
    width: int | None = None  # None: shares what the fixed columns leave
    justify: Literal["left", "right"] = "left"
    min_width: int = 8
    ratio: int = 1  # how flexible columns share the spare width
    # On a narrow terminal, columns with a drop rank are hidden, highest rank first, until
    # the flexible columns (a reason, a record) get their min_width: the column that says
    # most stays. 0: always shown.
    drop: int = 0


class Tone(NamedTuple):
    """A cell coloured by a theme variable ("success", "error", …), resolved when drawn, so a
    theme switch recolours the table."""

    text: str
    color: str

    def __str__(self) -> str:
        return self.text


Cell = str | Text | Tone


@dataclass(slots=True)
class Row:
    key: Hashable
    cells: tuple[Cell, ...]
    item: Any  # what the row shows (a quarantined record, a run); the anchor for paging


class PagedTable(ScrollView, can_focus=True):
    """Rows from a keyset-paged listing, one bounded window at a time."""

    COMPONENT_CLASSES = {
        "paged-table--header", "paged-table--cursor", "paged-table--cursor-blurred",
        "paged-table--marked", "paged-table--dim",
    }

    DEFAULT_CSS = """
    PagedTable {
        height: 1fr;
        scrollbar-gutter: stable;
        overflow-x: hidden;
        & > .paged-table--header { text-style: bold; color: $text-accent; background: $panel; }
        & > .paged-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground; text-style: $block-cursor-text-style; }
        & > .paged-table--cursor-blurred { background: $block-cursor-blurred-background; color: $block-cursor-blurred-foreground; }
        & > .paged-table--marked { color: $text-warning; text-style: bold; }
        & > .paged-table--dim { color: $text-muted; }
    }
    """

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.page_up"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.page_down"),
        Binding("home,g", "first", "First", show=False, id="table.first"),
        Binding("end,G", "last", "Last", show=False, id="table.last"),
    ]

    class Highlighted(Message):
        """The cursor is on another row (or on none: the table is empty)."""

        def __init__(self, table: "PagedTable", row: Row | None) -> None:
            self.table = table
            self.row = row
            super().__init__()

        @property
        def control(self) -> "PagedTable":
            return self.table

        def can_replace(self, message: Message) -> bool:
            # Holding a key down moves the cursor faster than a detail pane can follow.
            return isinstance(message, PagedTable.Highlighted) and message.table is self.table

    class Activated(Message):
        """A double click on a row (screens bind enter to what opening means for them)."""

        def __init__(self, table: "PagedTable", row: Row) -> None:
            self.table = table
            self.row = row
            super().__init__()

        @property
        def control(self) -> "PagedTable":
            return self.table

    cursor = reactive(0, always_update=True, init=False)
    total: reactive[int | None] = reactive(None, init=False)

    def __init__(self, columns: Sequence[Column], *, page_size: int = 100,
                 window_size: int = 400, margin: int = 20, markable: bool = False,
                 empty: str = "nothing here", name: str | None = None, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.columns = list(columns)
        self.page_size = page_size
        self.window_size = max(window_size, page_size * 2)
        self.margin = margin
        self.markable = markable
        self.empty_text = empty
        self.rows: list[Row] = []
        self.marks: dict[Hashable, Any] = {}
        self.generation = 0
        self.fetching = False
        self.window_start = 0  # the window's first row's position in the whole listing
        self._more_before = False
        self._more_after = False
        self._pending: set[str] = set()
        self._index: dict[Hashable, int] = {}
        self._widths: list[int] = []
        self._cache: LRUCache[tuple[Any, ...], Strip] = LRUCache(1024)
        self._styles: dict[str, Style] = {}
        # How long the last pages took from asking to showing (for the status line and the
        # benchmark): direction -> when it was asked.
        self._asked: dict[str, float] = {}
        self.page_times: deque[float] = deque(maxlen=256)

    # ------------------------------------------------------------------ the screen's side

    def reset(self) -> None:
        """Forget every row and ask for the first page (new filters, a refresh)."""
        self.generation += 1
        self.rows = []
        self._index = {}
        self._pending = {"first"}
        self._more_before = self._more_after = False
        self.fetching = True
        self.window_start = 0
        self._cache.clear()
        self._resize_virtual()
        self.scroll_to(y=0, animate=False, immediate=True)
        self.cursor = 0
        self._ask("first", None)

    def show_page(self, rows: Sequence[Row], direction: Direction, generation: int, *,
                  more: bool | None = None) -> None:
        """A page the screen fetched for `PageWanted`. Pages for an older generation (the
        filters changed while they were fetched) are dropped. `more` says whether the listing
        goes on past this page; by default a full page says it does."""
        if generation != self.generation:
            return
        self._pending.discard(direction)
        asked = self._asked.pop(direction, None)
        if asked is not None:
            self.page_times.append(time.perf_counter() - asked)
        if more is None:
            more = len(rows) >= self.page_size
        self.fetching = False
        keep_key = self.rows[self.cursor].key if self.rows else None
        if direction in ("first", "last"):
            self.rows = list(rows)
            self._more_before = direction == "last" and more
            self._more_after = direction == "first" and more
            self.window_start = max(0, (self.total or len(rows)) - len(rows)) if direction == "last" else 0
            self._reindex()
            self._resize_virtual()
            target = len(self.rows) - 1 if direction == "last" else 0
            self.scroll_to(y=self.max_scroll_y if direction == "last" else 0, animate=False,
                           immediate=True)
            self.cursor = max(0, target)
        elif direction == "after":
            known = [row for row in rows if row.key not in self._index]
            self.rows.extend(known)
            self._more_after = more
            excess = len(self.rows) - self.window_size
            if excess > 0:
                del self.rows[:excess]
                self.window_start += excess
                self._more_before = True
            self._reindex()
            self._resize_virtual()
            if excess > 0:
                self._shift(-excess, keep_key)
        else:  # before
            known = [row for row in rows if row.key not in self._index]
            self.rows[:0] = known
            self.window_start = max(0, self.window_start - len(known))
            self._more_before = more
            excess = len(self.rows) - self.window_size
            if excess > 0:
                del self.rows[-excess:]
                self._more_after = True
            self._reindex()
            self._resize_virtual()
            self._shift(len(known), keep_key)
        self._cache.clear()
        self.refresh()
        self._check_edges()

    def page_failed(self, direction: Direction, generation: int) -> None:
        """The fetch for `direction` failed: allow asking again."""
        if generation == self.generation:
            self._pending.discard(direction)
            self.fetching = False
            self.refresh()

    def update_row(self, key: Hashable, cells: tuple[Cell, ...], item: Any) -> None:
        index = self._index.get(key)
        if index is None:
            return
        self.rows[index] = Row(key, cells, item)
        if key in self.marks:
            self.marks[key] = item
        self._cache.clear()
        self.refresh()
        if index == self.cursor:
            self.post_message(self.Highlighted(self, self.rows[index]))

    def fit_column(self, index: int, width: int) -> None:
        """Give a column a new fixed width (to fit the values a first page brought)."""
        column = self.columns[index]
        if column.width != width:
            self.columns[index] = Column(column.label, width, column.justify, column.min_width,
                                         column.ratio, column.drop)
            self._layout_columns()
            self._cache.clear()
            self.refresh()

    @property
    def highlighted(self) -> Row | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    @property
    def position(self) -> str:
        """'row 1,234 of 100,000' for a status line."""
        if not self.rows:
            return "no rows" if not self.fetching else "loading…"
        where = f"row {self.window_start + self.cursor + 1:,}"
        return f"{where} of {self.total:,}" if self.total is not None else where

    def toggle_mark(self) -> None:
        row = self.highlighted
        if row is None or not self.markable:
            return
        if row.key in self.marks:
            del self.marks[row.key]
        else:
            self.marks[row.key] = row.item
        self.refresh()

    def clear_marks(self) -> None:
        self.marks.clear()
        self._cache.clear()
        self.refresh()

    def chosen(self) -> list[Any]:
        """The marked rows' items, or the highlighted row's when none is marked."""
        if self.marks:
            return list(self.marks.values())
        row = self.highlighted
        return [row.item] if row is not None else []

    # ------------------------------------------------------------------ actions

    def action_cursor(self, delta: int) -> None:
        if self.rows:
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + delta))

    def action_page(self, direction: int) -> None:
        step = max(1, self._visible_rows() - 1)
        if self.rows:
            self.scroll_to(y=self.scroll_y + direction * step, animate=False, immediate=True)
            self.cursor = max(0, min(len(self.rows) - 1, self.cursor + direction * step))

    def action_first(self) -> None:
        if self._more_before:
            self.reset()
        elif self.rows:
            self.cursor = 0

    def action_last(self) -> None:
        if self._more_after:
            self._pending.add("last")
            self.fetching = True
            self.refresh()
            self._ask("last", None)
        elif self.rows:
            self.cursor = len(self.rows) - 1

    def action_activate(self) -> None:
        row = self.highlighted
        if row is not None:
            self.post_message(self.Activated(self, row))

    # ------------------------------------------------------------------ reactivity

    def watch_cursor(self, old: int, new: int) -> None:
        # No cache to clear: the cursor is part of each cached line's key.
        self._scroll_to_cursor()
        self.refresh()
        self.post_message(self.Highlighted(self, self.highlighted))
        self._check_edges()

    def watch_total(self) -> None:
        self.refresh()

    def watch_scroll_y(self, old: float, new: float) -> None:
        super().watch_scroll_y(old, new)
        self._check_edges()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def on_resize(self, event: events.Resize) -> None:
        self._layout_columns()
        self._resize_virtual()
        self._cache.clear()
        # Fewer lines to show (a detail line below grew): the cursor's row stays in view.
        self._scroll_to_cursor()
        self._check_edges()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._cache.clear()
        self._styles = {}

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or offset.y < 1:
            return
        index = int(self.scroll_y) + offset.y - 1
        if 0 <= index < len(self.rows):
            if index == self.cursor and event.chain > 1:
                self.action_activate()
            self.cursor = index

    # ------------------------------------------------------------------ drawing

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if y == 0:
            return self._header(width)
        index = int(self.scroll_y) + y - 1
        if index >= len(self.rows):
            if index == len(self.rows) and (not self.rows or self._pending):
                return self._note(width, "loading…" if self._pending or self.fetching
                                  else self.empty_text)
            return Strip.blank(width, self.rich_style)
        row = self.rows[index]
        is_cursor = index == self.cursor
        marked = row.key in self.marks
        key = (row.key, is_cursor, marked, width, self.has_focus)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._draw(row, width, is_cursor, marked)
            self._cache[key] = strip
        return strip

    def _header(self, width: int) -> Strip:
        style = self._style("paged-table--header")
        cells = [Text(column.label) for column in self.columns]
        return self._line(cells, width, style, mark=" " if self.markable else None)

    def _note(self, width: int, text: str) -> Strip:
        style = self._style("paged-table--dim")
        return Strip([Segment(f" {text}", style)]).crop_extend(0, width, self.rich_style)

    def _style(self, name: str) -> Style:
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.get_component_rich_style(name)
        return style

    def _tone(self, variable: str) -> Style | None:
        key = f"${variable}"
        if key not in self._styles:
            if variable == "dim":
                style = Style(dim=True)
            else:
                try:
                    style = Style(color=self.app.theme_variables.get(variable))
                except Exception:  # not a plain colour (e.g. "auto 60%"): leave it be
                    style = Style()
            self._styles[key] = style
        return self._styles[key]

    def _draw(self, row: Row, width: int, is_cursor: bool, marked: bool) -> Strip:
        # The cursor goes over the cells' own colours (a red reason stays readable on it).
        cursor = None
        if is_cursor:
            cursor = self._style(
                "paged-table--cursor" if self.has_focus else "paged-table--cursor-blurred")
        mark = None
        if self.markable:
            mark = "●" if marked else " "
        return self._line(list(row.cells), width, self.rich_style, mark=mark,
                          mark_style=self._style("paged-table--marked"), over=cursor)

    def _line(self, cells: list[Cell], width: int, style: Style, *, mark: str | None,
              mark_style: Style | None = None, over: Style | None = None) -> Strip:
        """Segments straight from the cells: plain strings (most cells) are cropped and padded
        without Rich's layout machinery, which matters when a page of rows scrolls in."""
        if not self._widths:
            self._layout_columns()
        segments = [Segment(" ")]
        if mark is not None:
            segments.append(Segment(mark, mark_style if mark != " " else None))
            segments.append(Segment(" "))
        console = self.app.console
        for column, cell_width, cell in zip(self.columns, self._widths, cells):
            if cell_width == 0:
                continue  # dropped: the terminal is too narrow for it
            if isinstance(cell, Text):
                cell = cell.copy()
                cell.no_wrap = True
                cell.truncate(cell_width, overflow="ellipsis")
                if column.justify == "right":
                    cell.pad_left(cell_width - cell.cell_len)
                else:
                    cell.pad_right(cell_width - cell.cell_len)
                # Text.render leaves out the text's own base style: put it back under the spans.
                base = console.get_style(cell.style) if cell.style else None
                segments.extend(Segment.apply_style(cell.render(console), base))
            elif isinstance(cell, Tone):
                segments.append(Segment(_fit(cell.text, cell_width, column.justify),
                                        self._tone(cell.color)))
            else:
                segments.append(Segment(_fit(cell, cell_width, column.justify)))
            segments.append(Segment(" "))
        if over is None:
            return Strip(segments).apply_style(style).crop_extend(0, width, style)
        styled = Segment.apply_style(segments, style, over)
        return Strip(list(styled)).crop_extend(0, width, style + over)

    # ------------------------------------------------------------------ helpers

    def _layout_columns(self) -> None:
        width = max(self.scrollable_content_region.width, 20)
        hidden: set[int] = set()
        droppable = sorted((i for i, c in enumerate(self.columns) if c.drop),
                           key=lambda i: -self.columns[i].drop)
        flexible = [c for c in self.columns if c.width is None]
        while True:
            shown = [c for i, c in enumerate(self.columns) if i not in hidden]
            fixed = sum(column.width or 0 for column in shown)
            gaps = len(shown) + 1 + (2 if self.markable else 0)
            spare = max(0, width - fixed - gaps)
            if spare >= sum(c.min_width for c in flexible if c in shown) or not droppable:
                break
            hidden.add(droppable.pop(0))
        parts = sum(column.ratio for i, column in enumerate(self.columns)
                    if column.width is None and i not in hidden) or 1
        self._widths = [0 if i in hidden else column.width if column.width is not None
                        else max(column.min_width, spare * column.ratio // parts)
                        for i, column in enumerate(self.columns)]

    def _reindex(self) -> None:
        self._index = {row.key: i for i, row in enumerate(self.rows)}
        if self.cursor >= len(self.rows):
            self.cursor = max(0, len(self.rows) - 1)

    def _resize_virtual(self) -> None:
        lines = len(self.rows) + 1 + (1 if not self.rows or self._more_after else 0)
        self.virtual_size = Size(self.scrollable_content_region.width, lines)

    def _shift(self, delta: int, keep_key: Hashable | None) -> None:
        """Rows were added or dropped above the view: keep the same rows in view, the cursor
        on the same row."""
        self.scroll_to(y=self.scroll_y + delta, animate=False, immediate=True)
        index = self._index.get(keep_key) if keep_key is not None else None
        self.set_reactive(PagedTable.cursor, index if index is not None else
                          max(0, min(len(self.rows) - 1, self.cursor + delta)))

    def _ask(self, direction: Direction, anchor: Any) -> None:
        self._asked[direction] = time.perf_counter()
        self.post_message(PageWanted(self, direction, anchor, self.generation))

    @property
    def waiting(self) -> bool:
        """A page is on its way."""
        return bool(self._pending)

    def _visible_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _scroll_to_cursor(self) -> None:
        visible = self._visible_rows()
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False, immediate=True)

    def _check_edges(self) -> None:
        if not self.rows or "first" in self._pending or "last" in self._pending:
            return
        top = int(self.scroll_y)
        bottom = top + self._visible_rows()
        end = len(self.rows)
        if self._more_after and "after" not in self._pending and \
                (self.cursor >= end - self.margin or bottom >= end - self.margin):
            self._pending.add("after")
            self._ask("after", self.rows[-1].item)
        if self._more_before and "before" not in self._pending and \
                (self.cursor < self.margin or top < self.margin):
            self._pending.add("before")
            self._ask("before", self.rows[0].item)


def _fit(text: str, width: int, justify: str) -> str:
    """`text` in exactly `width` cells: cut with an ellipsis, or padded."""
    text = str(text)
    if "\n" in text:
        text = " ".join(text.split())
    length = cell_len(text)
    if length > width:
        text = set_cell_size(text, max(0, width - 1)) + "…" if width > 0 else ""
        length = width
    padding = " " * (width - length)
    return padding + text if justify == "right" else text + padding


def rows_from(items: Iterable[Any], key: Any, cells: Any) -> list[Row]:
    """Rows for `show_page`: `key(item)` and `cells(item)` for each item."""
    return [Row(key(item), cells(item), item) for item in items]
