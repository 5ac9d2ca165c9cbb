"""Helpers shared by tests and benchmarks. Importing this module changes nothing (unlike
tests/conftest.py, which points the DOCTAG_* environment at the test session)."""
from __future__ import annotations

import asyncio
import io


def pdf_without_text() -> bytes:
    """A one-page PDF with a drawing and no text layer, like a scanned page."""
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.rect(100, 100, 200, 200, fill=1)
    pdf.showPage()
    pdf.save()
    return buf.getvalue()


def delete_topology(amqp_url: str, prefix: str) -> None:
    """Removes the exchanges and queues of one AMQP prefix (a test session's, a benchmark's)."""
    import aio_pika

    from services.common.amqp import Topology

    async def run() -> None:
        connection = await aio_pika.connect(amqp_url)
        try:
            await Topology(prefix=prefix).delete(await connection.channel())
        finally:
            await connection.close()

    asyncio.run(run())
