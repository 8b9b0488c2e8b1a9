"""Reading a PDF page the way a viewer draws it: every content stream and form is interpreted, and each glyph and drawing recorded with how and where it is drawn (see `pdf_content`)."""

from __future__ import annotations

import hashlib
import math
from typing import Any

from reef_forensics.report.pdf_content import (
    MAX_FORM_DEPTH,
    MAX_OPERATIONS,
    Box,
    ContentError,
    Glyph,
    Look,
    Matrix,
    Page,
    Paint,
    _apply,
    _box_of,
    _get,
    _inside,
    _intersect,
    _mul,
    _number,
    _r,
    _space_kind,
    _State,
)
from reef_forensics.report.pdf_fonts import Font
from reef_forensics.report.pdf_operators import Run, apply_operator


class _Interpreter:
    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.fonts: dict[int, Font] = {}
        self.operations = 0

    def page(self, page: Any) -> Page:
        media = [_number(v) for v in page.mediabox]
        crop = [_number(v) for v in page.cropbox]
        visible = _intersect(
            _box_of([(media[0], media[1]), (media[2], media[3])]),
            _box_of([(crop[0], crop[1]), (crop[2], crop[3])]),
        )
        out = Page(box=visible)
        self._seq = 0
        contents = page.get_contents()
        if contents is not None:
            self._run(contents, _get(page, "/Resources"), _State(), out, depth=0, forms=())
        _mark_hidden(out)
        return out

    def _font(self, resources: Any, name: Any) -> Font:
        fonts = _get(resources, "/Font") if resources is not None else None
        if fonts is None or name not in fonts:
            raise ContentError(f"the font {name} is not among the page's resources")
        reference = fonts.raw_get(name)
        key = getattr(reference, "idnum", None) or id(fonts[name])
        if key not in self.fonts:
            self.fonts[key] = Font(fonts[name].get_object())
        return self.fonts[key]

    def _run(
        self,
        contents: Any,
        resources: Any,
        state: _State,
        page: Page,
        *,
        depth: int,
        forms: tuple[int, ...],
    ) -> None:
        from pypdf.generic import ContentStream

        resources = resources.get_object() if resources is not None else None
        stream = ContentStream(contents, self.reader)
        run = Run(resources, state, page, depth, forms)
        for operands, operator in stream.operations:
            self.operations += 1
            if self.operations > MAX_OPERATIONS:
                raise ContentError(f"the document draws more than {MAX_OPERATIONS} operations")
            op = operator.decode("latin-1") if isinstance(operator, bytes) else str(operator)
            apply_operator(self, op, operands, run)

    def _ext_gstate(self, resources: Any, name: Any, state: _State) -> None:
        states = _get(resources, "/ExtGState") if resources is not None else None
        if states is None or name not in states:
            raise ContentError(f"the graphics state {name} is not among the page's resources")
        entry = states[name].get_object()
        if "/ca" in entry:
            state.fill_alpha = round(_number(entry["/ca"]), 3)
        if "/CA" in entry:
            state.stroke_alpha = round(_number(entry["/CA"]), 3)
        if "/SMask" in entry:
            state.soft_mask = entry["/SMask"] != "/None"
        if "/BM" in entry:
            blend = entry["/BM"]
            blend = blend[0] if isinstance(blend, list) and blend else blend
            state.blend = (
                "Normal" if str(blend) in ("/Normal", "/Compatible") else str(blend).lstrip("/")
            )
        for key in ("/TR", "/TR2"):
            if key in entry:
                state.transfer = str(entry[key]) not in ("/Identity", "/Default")
        if "/LW" in entry:
            state.line_width = _number(entry["/LW"])
        if "/Font" in entry:
            raise ContentError(
                "a graphics state sets a font, which the report's renderer never does"
            )

    def _colour_space(self, resources: Any, name: Any) -> str:
        if str(name) in ("/DeviceRGB", "/DeviceGray", "/DeviceCMYK", "/Pattern"):
            return _space_kind(str(name))
        spaces = _get(resources, "/ColorSpace") if resources is not None else None
        if spaces is None or name not in spaces:
            raise ContentError(f"the colour space {name} is not among the page's resources")
        return _space_kind(spaces[name])

    def _show(self, data: bytes, tm: Matrix, state: _State, page: Page, optional: bool) -> Matrix:
        font = state.font
        if font is None:
            raise ContentError("text is shown before a font is set")
        if len(data) % 2:
            raise ContentError(f"a string shown in {font.name} has an odd number of bytes")
        look = Look(
            state.mode,
            state.fill,
            state.stroke,
            state.fill_alpha,
            state.stroke_alpha,
            state.soft_mask,
            state.blend,
            state.transfer,
            optional,
        )
        size, scale = state.font_size, state.horizontal
        for i in range(0, len(data), 2):
            code = int.from_bytes(data[i : i + 2], "big")
            width = font.width(code)
            rendering = _mul((size * scale, 0.0, 0.0, size, 0.0, state.rise), _mul(tm, state.ctm))
            x, y = _apply(rendering, 0.0, 0.0)
            cx, cy = _apply(rendering, width / 2000, 0.35)
            em = math.hypot(rendering[2], rendering[3])
            across = math.hypot(rendering[0], rendering[1])
            self._seq += 1
            page.glyphs.append(
                Glyph(
                    text=font.unicode.get(code, "\ufffd"),
                    x=x,
                    y=y,
                    cx=cx,
                    cy=cy,
                    size=em,
                    scale=across / em if em else 0.0,
                    advance=width / 1000 * across,
                    font=font.name,
                    shape=font.shape(code),
                    look=look,
                    clip=state.clip,
                    seq=self._seq,
                )
            )
            advance = (width / 1000 * size + state.char_spacing) * scale
            tm = _mul((1.0, 0.0, 0.0, 1.0, advance, 0.0), tm)
        return tm

    def _paint_path(
        self,
        op: str,
        path: list[tuple[str, tuple[float, ...]]],
        points: list[tuple[float, float]],
        state: _State,
        page: Page,
        optional: bool,
    ) -> None:
        fills = op in ("f", "F", "f*", "B", "B*", "b", "b*")
        strokes = op in ("S", "s", "B", "B*", "b", "b*")
        box = _intersect(_box_of(points), state.clip)
        scale = math.sqrt(abs(state.ctm[0] * state.ctm[3] - state.ctm[1] * state.ctm[2]))
        detail = (
            op,
            tuple(path),
            state.fill if fills else None,
            state.stroke if strokes else None,
            (round(state.line_width * scale, 3), state.dash, state.cap_join) if strokes else None,
            state.fill_alpha,
            state.stroke_alpha,
            state.soft_mask,
            state.blend,
            state.transfer,
            optional,
            tuple(_r(c) if math.isfinite(c) else c for c in state.clip),
        )
        opaque = (
            fills
            and state.fill_alpha >= 0.999
            and not state.soft_mask
            and state.blend == "Normal"
            and not optional
        )
        self._add_paint(page, "fill" if fills else "stroke", box, detail, opaque)

    def _add_paint(
        self, page: Page, kind: str, box: Box, detail: tuple[Any, ...], opaque: bool
    ) -> None:
        self._seq += 1
        page.paints.append(Paint(kind, box, detail, opaque, self._seq))

    def _picture(self, identity: tuple[Any, ...], opaque: bool, state: _State, page: Page) -> None:
        corners = [_apply(state.ctm, x, y) for x, y in ((0, 0), (1, 0), (1, 1), (0, 1))]
        box = _box_of(corners)
        detail = (
            "image",
            identity,
            tuple(_r(c) for c in box),
            state.fill_alpha,
            state.soft_mask,
            state.blend,
            tuple(_r(c) if math.isfinite(c) else c for c in state.clip),
        )
        opaque = opaque and state.fill_alpha >= 0.999 and not state.soft_mask
        self._add_paint(page, "picture", _intersect(box, state.clip), detail, opaque)

    def _xobject(
        self,
        resources: Any,
        name: Any,
        state: _State,
        page: Page,
        *,
        depth: int,
        forms: tuple[int, ...],
        optional: bool,
    ) -> None:
        objects = _get(resources, "/XObject") if resources is not None else None
        if objects is None or name not in objects:
            raise ContentError(f"the object {name} is not among the page's resources")
        reference = objects.raw_get(name)
        xobject = objects[name].get_object()
        subtype = _get(xobject, "/Subtype")
        if subtype == "/Image":
            data = bytes(xobject.get_data())
            mask = _get(xobject, "/SMask")
            stencil = bool(_get(xobject, "/ImageMask", False))
            identity = (
                hashlib.sha256(data).hexdigest()[:24],
                int(_get(xobject, "/Width", 0)),
                int(_get(xobject, "/Height", 0)),
                hashlib.sha256(bytes(mask.get_object().get_data())).hexdigest()[:24]
                if mask is not None
                else "",
                state.fill if stencil else None,  # a stencil is painted in the fill colour
            )
            opaque = mask is None and "/Mask" not in xobject and not stencil
            self._picture(identity, opaque, state, page)
            return
        if subtype != "/Form":
            raise ContentError(f"the object {name} is a {subtype} object, which is not drawn here")
        key = getattr(reference, "idnum", None) or id(xobject)
        if depth >= MAX_FORM_DEPTH or key in forms:
            raise ContentError("forms are nested too deeply, or draw themselves")
        inner = state.copy()
        matrix = _get(xobject, "/Matrix")
        if matrix is not None:
            inner.ctm = _mul(tuple(_number(v) for v in matrix), inner.ctm)  # type: ignore[arg-type]
        bbox = _get(xobject, "/BBox")
        if bbox is not None:
            x0, y0, x1, y1 = (_number(v) for v in bbox)
            corners = [_apply(inner.ctm, x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
            inner.clip = _intersect(inner.clip, _box_of(corners))
        inner_resources = _get(xobject, "/Resources", resources)
        if optional or "/OC" in xobject:
            # content a viewer may hide: every glyph and drawing in it says so
            self._run_optional(xobject, inner_resources, inner, page, depth, (*forms, key))
            return
        self._run(xobject, inner_resources, inner, page, depth=depth + 1, forms=(*forms, key))

    def _run_optional(
        self,
        xobject: Any,
        resources: Any,
        state: _State,
        page: Page,
        depth: int,
        forms: tuple[int, ...],
    ) -> None:
        before_glyphs, before_paints = len(page.glyphs), len(page.paints)
        self._run(xobject, resources, state, page, depth=depth + 1, forms=forms)
        for glyph in page.glyphs[before_glyphs:]:
            glyph.look = Look(**{**glyph.look.__dict__, "optional": True})
        page.paints[before_paints:] = [
            Paint(p.kind, p.box, (*p.detail, "optional"), False, p.seq)
            for p in page.paints[before_paints:]
        ]


def _mark_hidden(page: Page) -> None:
    """Why each inked glyph cannot be seen: its centre outside the page, outside its clipping
    area, or under an opaque drawing made after it."""
    import numpy as np

    inked = [g for g in page.glyphs if g.inked]
    for glyph in inked:
        if not _inside(page.box, glyph.cx, glyph.cy, slack=0.5):
            glyph.hidden = "outside the page"
        elif not _inside(glyph.clip, glyph.cx, glyph.cy, slack=0.5):
            glyph.hidden = "clipped away"
    covers = [p for p in page.paints if p.opaque]
    if not inked or not covers:
        return
    gx = np.array([g.cx for g in inked])
    gy = np.array([g.cy for g in inked])
    gs = np.array([g.seq for g in inked])
    boxes = np.array([p.box for p in covers])
    ps = np.array([p.seq for p in covers])
    covered = (
        (ps[None, :] > gs[:, None])
        & (boxes[None, :, 0] <= gx[:, None])
        & (gx[:, None] <= boxes[None, :, 2])
        & (boxes[None, :, 1] <= gy[:, None])
        & (gy[:, None] <= boxes[None, :, 3])
    ).any(axis=1)
    for glyph, hidden in zip(inked, np.atleast_1d(covered).tolist(), strict=True):
        if hidden and not glyph.hidden:
            glyph.hidden = "under an opaque drawing made after it"


def read_pages(reader: Any) -> list[Page]:
    """Every page of a PDF (a pypdf reader) as drawn."""
    interpreter = _Interpreter(reader)
    pages = []
    for number, page in enumerate(reader.pages, start=1):
        try:
            pages.append(interpreter.page(page))
        except ContentError as exc:
            raise ContentError(f"page {number}: {exc}") from None
        except Exception as exc:  # a malformed page: a failed check, never a crash
            reason = " ".join(str(exc).split())[:120]
            raise ContentError(
                f"page {number} cannot be read ({type(exc).__name__}: {reason})"
            ) from None
    return pages
