"""The content-stream operators a viewer draws with, one handler per group: the graphics state
(``q``, ``cm``, colours ...), paths (``m``, ``re``, ``f`` ...), text (``BT``, ``Tf``, ``TJ``
...) and the rest (forms and images, shadings, marked content). `pdf_interpreter` runs each
operator of a stream through `apply_operator`; what the stream carries from one operator to
the next is a `Run`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reef_forensics.report.pdf_content import (
    IDENTITY,
    Matrix,
    Page,
    _apply,
    _box_of,
    _colour_value,
    _intersect,
    _mul,
    _number,
    _r,
    _State,
    _string,
)

if TYPE_CHECKING:
    from reef_forensics.report.pdf_interpreter import _Interpreter


@dataclass
class Run:
    """What one content stream's interpretation carries from operator to operator."""

    resources: Any
    state: _State
    page: Page
    depth: int
    forms: tuple[int, ...]
    stack: list[_State] = field(default_factory=list)
    marked: list[bool] = field(default_factory=list)
    path: list[tuple[str, tuple[float, ...]]] = field(default_factory=list)
    points: list[tuple[float, float]] = field(default_factory=list)
    moved: tuple[float, float] | None = None  # a move not yet followed by a segment
    pending_clip: bool = False
    text_matrix: Matrix = IDENTITY
    line_matrix: Matrix = IDENTITY

    @property
    def optional(self) -> bool:
        """Inside optional content (marked ``/OC``)."""
        return bool(self.marked and any(self.marked))


_GRAPHICS = frozenset(
    {"q", "Q", "cm", "w", "d", "J", "j", "M", "gs", "g", "rg", "k", "G", "RG", "K", "cs", "CS"}
    | {"sc", "scn", "SC", "SCN"}
)
_PATHS = frozenset(
    {"m", "l", "c", "v", "y", "h", "re", "W", "W*"}
    | {"S", "s", "f", "F", "f*", "B", "B*", "b", "b*", "n"}
)
_TEXT = frozenset(
    {"BT", "ET", "Tf", "Tc", "Tw", "Tz", "TL", "Ts", "Tr", "Td", "TD", "Tm", "T*"}
    | {"Tj", "'", '"', "TJ"}
)


def apply_operator(interpreter: _Interpreter, op: str, n: Any, run: Run) -> None:
    """Carry out one operator with its operands ``n``."""
    if op in _GRAPHICS:
        _graphics(interpreter, op, n, run)
    elif op in _PATHS:
        _paths(interpreter, op, n, run)
    elif op in _TEXT:
        _text(interpreter, op, n, run)
    else:
        _other(interpreter, op, n, run)


def _graphics(interpreter: _Interpreter, op: str, n: Any, run: Run) -> None:
    state = run.state
    if op == "q":
        run.stack.append(state.copy())
    elif op == "Q":
        if run.stack:
            run.state = run.stack.pop()
    elif op == "cm":
        state.ctm = _mul(tuple(_number(v) for v in n[:6]), state.ctm)  # type: ignore[arg-type]
    elif op == "w":
        state.line_width = _number(n[0])
    elif op == "d":
        state.dash = (tuple(_number(v) for v in n[0]), _number(n[1]))
    elif op in ("J", "j", "M"):
        index = "JjM".index(op)
        values = list(state.cap_join)
        values[index] = _number(n[0])
        state.cap_join = tuple(values)
    elif op == "gs":
        interpreter._ext_gstate(run.resources, n[0], state)
    elif op in ("g", "rg", "k", "G", "RG", "K"):
        kind = {"g": "gray", "rg": "rgb", "k": "cmyk"}[op.lower()]
        value = _colour_value(kind, [_number(v) for v in n])
        if op.islower():
            state.fill_space, state.fill = kind, value
        else:
            state.stroke_space, state.stroke = kind, value
    elif op in ("cs", "CS"):
        kind = interpreter._colour_space(run.resources, n[0])
        initial = _colour_value(kind, [0.0] * {"rgb": 3, "cmyk": 4}.get(kind, 1))
        if kind == "cmyk":
            initial = ("cmyk", 0.0, 0.0, 0.0, 1.0)
        if op == "cs":
            state.fill_space, state.fill = kind, initial
        else:
            state.stroke_space, state.stroke = kind, initial
    else:  # sc, scn, SC, SCN
        values = [v if not isinstance(v, int | float) else _number(v) for v in n]
        if op.islower():
            state.fill = _colour_value(state.fill_space, values)
        else:
            state.stroke = _colour_value(state.stroke_space, values)


def _paths(interpreter: _Interpreter, op: str, n: Any, run: Run) -> None:
    state = run.state
    if op == "m":
        x, y = _apply(state.ctm, _number(n[0]), _number(n[1]))
        run.path.append(("m", (_r(x), _r(y))))
        run.moved = (x, y)
    elif op in ("l", "c", "v", "y"):
        coordinates = [_number(v) for v in n]
        pairs = [
            _apply(state.ctm, coordinates[i], coordinates[i + 1])
            for i in range(0, len(coordinates) - 1, 2)
        ]
        run.path.append((op, tuple(_r(c) for p in pairs for c in p)))
        if run.moved is not None:  # a lone move draws nothing, so it bounds nothing
            run.points.append(run.moved)
            run.moved = None
        run.points.extend(pairs)
    elif op == "h":
        run.path.append(("h", ()))
    elif op == "re":
        x, y, w, h = (_number(v) for v in n[:4])
        corners = [
            _apply(state.ctm, px, py) for px, py in ((x, y), (x + w, y), (x + w, y + h), (x, y + h))
        ]
        run.path.append(("re", tuple(_r(c) for p in corners for c in p)))
        run.points.extend(corners)
        run.moved = None
    elif op in ("W", "W*"):
        run.pending_clip = True
    else:  # S, s, f, F, f*, B, B*, b, b*, n: paint (or not) and end the path
        if op != "n" and run.points:
            interpreter._paint_path(op, run.path, run.points, state, run.page, run.optional)
        if run.pending_clip:  # an empty clipping path leaves nothing to see
            state.clip = _intersect(
                state.clip, _box_of(run.points) if run.points else (0.0, 0.0, -1.0, -1.0)
            )
        run.path, run.points, run.pending_clip, run.moved = [], [], False, None


def _text(interpreter: _Interpreter, op: str, n: Any, run: Run) -> None:
    state = run.state
    if op == "BT":
        run.text_matrix = run.line_matrix = IDENTITY
    elif op == "ET":
        pass
    elif op == "Tf":
        state.font = interpreter._font(run.resources, n[0])
        state.font_size = _number(n[1])
    elif op == "Tc":
        state.char_spacing = _number(n[0])
    elif op == "Tw":
        state.word_spacing = _number(n[0])
    elif op == "Tz":
        state.horizontal = _number(n[0]) / 100
    elif op == "TL":
        state.leading = _number(n[0])
    elif op == "Ts":
        state.rise = _number(n[0])
    elif op == "Tr":
        state.mode = int(_number(n[0]))
    elif op in ("Td", "TD"):
        tx, ty = _number(n[0]), _number(n[1])
        if op == "TD":
            state.leading = -ty
        run.line_matrix = run.text_matrix = _mul((1.0, 0.0, 0.0, 1.0, tx, ty), run.line_matrix)
    elif op == "Tm":
        run.line_matrix = run.text_matrix = tuple(_number(v) for v in n[:6])  # type: ignore[assignment]
    elif op == "T*":
        run.line_matrix = run.text_matrix = _mul(
            (1.0, 0.0, 0.0, 1.0, 0.0, -state.leading), run.line_matrix
        )
    else:  # Tj, ', ", TJ
        _show_text(interpreter, op, n, run)


def _show_text(interpreter: _Interpreter, op: str, n: Any, run: Run) -> None:
    state = run.state
    if op in ("'", '"'):
        if op == '"':
            state.word_spacing, state.char_spacing = _number(n[0]), _number(n[1])
        run.line_matrix = run.text_matrix = _mul(
            (1.0, 0.0, 0.0, 1.0, 0.0, -state.leading), run.line_matrix
        )
    items = n[0] if op == "TJ" else [n[-1]]
    for item in items:
        if isinstance(item, int | float):
            shift = -_number(item) / 1000 * state.font_size * state.horizontal
            run.text_matrix = _mul((1.0, 0.0, 0.0, 1.0, shift, 0.0), run.text_matrix)
        else:
            run.text_matrix = interpreter._show(
                _string(item), run.text_matrix, state, run.page, run.optional
            )


def _other(interpreter: _Interpreter, op: str, n: Any, run: Run) -> None:
    state, page = run.state, run.page
    if op == "Do":
        interpreter._xobject(
            run.resources,
            n[0],
            state,
            page,
            depth=run.depth,
            forms=run.forms,
            optional=run.optional,
        )
    elif op == "INLINE IMAGE":
        data = n.get("data", b"") if isinstance(n, dict) else b""
        interpreter._picture(
            ("inline", hashlib.sha256(bytes(data)).hexdigest()[:24]), True, state, page
        )
    elif op == "sh":
        box = state.clip if all(map(math.isfinite, state.clip)) else page.box
        interpreter._add_paint(page, "shading", box, ("sh", str(n[0])), False)
    elif op in ("BMC", "BDC"):
        run.marked.append(op == "BDC" and bool(n) and n[0] == "/OC")
    elif op == "EMC" and run.marked:
        run.marked.pop()
    # anything else (BX/EX, MP/DP, ri, i, d0/d1) draws nothing itself
