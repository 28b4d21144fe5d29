"""The leaderboard's tables as text: fitted to 80 columns, or every column whole (`--wide`).

`format_table(table)` fits a table to TABLE_WIDTH (a terminal's and tmux's default width);
`format_table(table, None)` prints every column as wide as its longest cell. A table that fits is
the same either way. One that does not is fitted in this order, each step only when still needed:
1. the columns the table marks "drop" (details: author, model FLOPs, MFU, the law's a, b, c) are
   left out, and its note names them (`--wide` shows them); those it marks "fold" (R², overlaps,
   the notes) move under their row, as `header: value`;
2. the widest column narrows, one character at a time, until the table fits: a header wraps at
   its spaces, down to its widest number; a text cell (run and group names) wraps onto more lines,
   after a `/` where one is near, else a space, `_` or `-`, down to MIN_TEXT_WIDTH.
Titles and notes wrap too; anything longer than MAX_LINES lines is cut with "…" (`--wide` and
`--json` show it whole). Control characters are shown as escapes in both modes: a hostile name
can neither break a line nor drive the terminal.
"""

from __future__ import annotations

import textwrap

from speedrun_trainer.leaderboard.run_checks import printable
from speedrun_trainer.leaderboard.runs import Table

TABLE_WIDTH = 80
MIN_TEXT_WIDTH = 12
MAX_LINES = 4
GAP = "  "
BREAKS = "/ _-"  # a text cell breaks after one of these (a "/" first), the last that fits
INDENT = "   "


def wrap_cell(text: str, width: int) -> list[str]:
    """`text` in lines of at most `width`, broken after a BREAKS character in the last two thirds
    of a line (else anywhere); over MAX_LINES lines, cut with "…"."""
    lines: list[str] = []
    rest = text
    while len(rest) > width and len(lines) < MAX_LINES:  # never more: a huge name costs MAX_LINES cuts
        cut = rest.rfind("/", 0, width) + 1  # a name's folders stay whole where they can
        if cut <= width // 2:
            cut = max(rest.rfind(c, 0, width) for c in BREAKS) + 1
        if cut <= width // 3:
            cut = width
        lines.append(rest[:cut].rstrip(" "))
        rest = rest[cut:].lstrip(" ")
    if len(lines) < MAX_LINES:
        lines.append(rest)
    elif rest:
        lines[-1] = lines[-1][: width - 1] + "…"
    return lines


def _wrap_text(text: str, width: int, first: str, rest: str) -> list[str]:
    """Words in lines of at most `width`, the first starting with `first`, the others with `rest`."""
    return textwrap.wrap(
        text,
        width,
        initial_indent=first,
        subsequent_indent=rest,
        break_on_hyphens=False,
        max_lines=MAX_LINES,
        placeholder=" …",
    ) or [first.rstrip()]


def _line(cells: list[str], widths: list[int], numeric: list[bool]) -> str:
    pairs = zip(cells, widths, numeric, strict=True)
    return GAP.join(c.rjust(w) if num else c.ljust(w) for c, w, num in pairs).rstrip()


def _total(widths: list[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def format_table(table: Table, width: int | None = TABLE_WIDTH) -> str:
    """The table as text: fitted to `width` columns, or (None) every column whole."""
    headers = [printable(h) for h in table.headers]
    rows = [[printable(c) for c in row] for row in table.rows]
    title, note = f"== {printable(table.title)}", printable(table.note)
    natural = [max(len(c) for c in col) for col in zip(headers, *rows, strict=True)]
    if width is None or (_total(natural) <= width and len(title) <= width and len(INDENT + note) <= width):
        lines = [title, INDENT + note, _line(headers, natural, table.numeric)]
        lines.append(_line(["-" * w for w in natural], natural, table.numeric))
        return "\n".join([*lines, *(_line(r, natural, table.numeric) for r in rows)])
    policy = table.narrow or [""] * len(headers)
    keep = list(range(len(headers)))
    if _total(natural) > width:  # 1. details left out, long cells folded under their row
        keep = [i for i, p in enumerate(policy) if p not in ("drop", "fold")]
        dropped = [headers[i] for i, p in enumerate(policy) if p == "drop"]
        if dropped:
            note += f"; not shown: {', '.join(dropped)} (--wide shows every column)"
    folded = [i for i, p in enumerate(policy) if p == "fold" and i not in keep]
    numeric = [table.numeric[i] for i in keep]
    columns = [[headers[i]] + [r[i] for r in rows] for i in keep]
    widths = _fit([natural[i] for i in keep], columns, numeric, width)
    out = [*_wrap_text(title, width, "", INDENT), *_wrap_text(note, width, INDENT, INDENT)]
    header = [wrap_cell(headers[i], w) for i, w in zip(keep, widths, strict=True)]
    tall = max(len(h) for h in header)
    header = [[""] * (tall - len(h)) + h for h in header]  # headers sit on the rule
    out += [_line(list(cells), widths, numeric) for cells in zip(*header, strict=True)]
    out.append(_line(["-" * w for w in widths], widths, numeric))
    fold_indent = " " * (widths[0] + len(GAP))
    for row in rows:
        cells = [[row[i]] if num else wrap_cell(row[i], w) for i, w, num in zip(keep, widths, numeric, strict=True)]
        height = max(len(c) for c in cells)
        for k in range(height):
            out.append(_line([c[k] if k < len(c) else "" for c in cells], widths, numeric))
        extra = "; ".join(f"{headers[i]}: {row[i]}" for i in folded if row[i] not in ("", "-"))
        if extra:
            out += _wrap_text(extra, width, fold_indent, fold_indent)
    return "\n".join(out)


def _fit(widths: list[int], columns: list[list[str]], numeric: list[bool], width: int) -> list[int]:
    """Column widths within `width`: the widest column narrowed one character at a time (2.), each
    width what its wrapped lines then take."""
    floor = []
    for col, num, w in zip(columns, numeric, widths, strict=True):
        word = max(len(part) for part in col[0].split() or [""])  # a header's longest word
        floor.append(max([word, *(len(c) for c in col[1:])]) if num else max(word, min(w, MIN_TEXT_WIDTH)))

    def taken(i: int, w: int) -> int:
        cells = columns[i][:1] if numeric[i] else columns[i]
        wrapped = max(len(line) for c in cells for line in (wrap_cell(c, w) if len(c) > w else [c]))
        return max([wrapped, *(len(c) for c in columns[i][1:])]) if numeric[i] else wrapped

    widths = list(widths)
    while _total(widths) > width:
        shrinkable = [i for i, w in enumerate(widths) if w > floor[i]]
        if not shrinkable:
            break  # as narrow as it goes: the lines stay longer than `width`
        i = max(shrinkable, key=lambda i: widths[i])
        widths[i] = taken(i, widths[i] - 1)
    return widths
