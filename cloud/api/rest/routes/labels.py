"""QR labels for devices, assets and areas: ``GET /api/v1/{devices,assets,areas}/{token}/label.png``
and ``.svg``. The code holds the entity's URL under ``labels.base_url`` (its REST resource,
``<base_url>/api/v1/<kind>/<token>``), so a scanned label leads to that entity of this cloud.

The SVG prints the token as text beside the code. The PNG is the code alone: segno writes PNG
without Pillow but draws no text, and rendering text into a PNG would need a font rasteriser.
Reading a label needs ``read``; a customer user gets labels of its own devices only.

No ``from __future__ import annotations``: FastAPI reads the route signatures.
"""

import io
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal
from urllib.parse import quote
from xml.sax.saxutils import escape

import segno
from fastapi import APIRouter, Depends
from fastapi.responses import Response

from fieldgate.cloud.api.rest.models import error_docs
from fieldgate.cloud.errors import NotFound
from fieldgate.cloud.services.access import Principal
from fieldgate.cloud.services.management import Management
from fieldgate.cloud.store.site import Kind, SiteStore, describe

SCALE = 4
BORDER = 2
FONT_PX = 14
CHAR_PX = 8.5  # advance of one monospace character at FONT_PX (generous)

Format = Literal["png", "svg"]
_MEDIA = {"png": "image/png", "svg": "image/svg+xml"}


def entity_url(base_url: str, path: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/api/v1/{path}/{quote(token, safe='')}"


def label_png(url: str) -> bytes:
    buf = io.BytesIO()
    segno.make(url, error="m").save(buf, kind="png", scale=SCALE, border=BORDER)
    return buf.getvalue()


def label_svg(url: str, token: str) -> bytes:
    """The code with the token printed to its right, as one SVG document."""
    qr = segno.make(url, error="m")
    width, height = qr.symbol_size(scale=SCALE, border=BORDER)
    buf = io.BytesIO()
    qr.save(buf, kind="svg", scale=SCALE, border=BORDER, xmldecl=False, svgns=True, nl=False)
    code = buf.getvalue().decode()
    text_x = width + 8
    total_w = int(text_x + CHAR_PX * len(token) + 8)
    total_h = max(height, FONT_PX * 2)
    doc = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}"'
        f' viewBox="0 0 {total_w} {total_h}">'
        f'<rect width="{total_w}" height="{total_h}" fill="#fff"/>'
        f"{code}"
        f'<text x="{text_x}" y="{total_h // 2}" dominant-baseline="middle" font-family="monospace"'
        f' font-size="{FONT_PX}">{escape(token)}</text>'
        "</svg>"
    )
    return doc.encode()


def labels_router(
    site: SiteStore | None,
    mgmt: Management,
    read: Callable[..., Awaitable[Principal]],
    base_url: str,
) -> APIRouter:
    """Device labels always; asset and area labels when the site store is given."""
    router = APIRouter(prefix="/api/v1", responses=error_docs(common=True))
    Read = Annotated[Principal, Depends(read)]
    found = error_docs({404: "no such entity"})
    images: dict[int | str, dict[str, Any]] = {
        200: {"content": {"image/png": {}, "image/svg+xml": {}}, "description": "the label"}
    }

    def answer(fmt: Format, path: str, token: str) -> Response:
        url = entity_url(base_url, path, token)
        body = label_png(url) if fmt == "png" else label_svg(url, token)
        return Response(body, media_type=_MEDIA[fmt], headers={"Cache-Control": "no-store"})

    async def site_label(who: Principal, kind: Kind, path: str, token: str, fmt: Format) -> Response:
        if site is None or await site.get(who.tenant, kind, token) is None:
            raise NotFound(f"{describe(kind, token)} does not exist")
        return answer(fmt, path, token)

    for fmt in ("png", "svg"):

        def routes(fmt: Format) -> None:
            @router.get(
                f"/devices/{{token}}/label.{fmt}",
                tags=["labels"],
                response_class=Response,
                responses=found | images,
                name=f"device_label_{fmt}",
            )
            async def device_label(token: str, who: Read) -> Response:
                await mgmt.get_device(who.tenant, token, customer=who.scope_customer)
                return answer(fmt, "devices", token)

            if site is None:
                return

            @router.get(
                f"/assets/{{token}}/label.{fmt}",
                tags=["labels"],
                response_class=Response,
                responses=found | images,
                name=f"asset_label_{fmt}",
            )
            async def asset_label(token: str, who: Read) -> Response:
                return await site_label(who, "asset", "assets", token, fmt)

            @router.get(
                f"/areas/{{token}}/label.{fmt}",
                tags=["labels"],
                response_class=Response,
                responses=found | images,
                name=f"area_label_{fmt}",
            )
            async def area_label(token: str, who: Read) -> Response:
                return await site_label(who, "area", "areas", token, fmt)

        routes(fmt)

    return router
