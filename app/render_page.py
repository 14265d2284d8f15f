"""Render one PDF page to a PNG, in a child process of its own: `python app/render_page.py PDF PAGE SCALE
MAX_PIXELS MEMORY_MB CPU_S OUT`.

PDFium (pypdfium2) is fast on ordinary pages (about 0.1 s for a letter page at 2x here) but cannot be
interrupted from Python, and a hostile or merely enormous page can take it minutes or gigabytes. So
`app.pages` runs this script as a separate process: the parent kills it at its deadline, and the
script caps its own address space and CPU time before it opens the file. The pixel count is capped
as well (the scale shrinks for a huge page), so the image's size never depends on the document.

It imports nothing from Cove (it starts faster and needs no package path) and prints one JSON line:
the rendered box (PDF user space), the page's rotation and the image size, which is all the parent
needs to place highlight rectangles on the image.
"""

from __future__ import annotations

import json
import math
import resource
import sys


def limit_resources(memory_mb: int, cpu_s: int) -> None:
    """Cap this process: address space (PDFium's allocations fail instead of swapping) and CPU time."""
    memory = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))


def fitted_scale(width: float, height: float, scale: float, max_pixels: int) -> float:
    """`scale`, or less when the page would otherwise exceed `max_pixels` (a poster-sized page)."""
    area = max(width, 1.0) * max(height, 1.0)
    return min(scale, math.sqrt(max_pixels / area))


def render(pdf_path: str, page_number: int, scale: float, max_pixels: int, out: str) -> dict:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(pdf_path)
    try:
        if not 1 <= page_number <= len(pdf):
            raise SystemExit(f"page {page_number} is not in this document ({len(pdf)} pages)")
        page = pdf[page_number - 1]
        width, height = page.get_size()
        fitted = fitted_scale(width, height, scale, max_pixels)
        image = page.render(scale=fitted, may_draw_forms=False).to_pil().convert("RGB")
        image.save(out, format="PNG", compress_level=3)
        return {
            "box": list(page.get_cropbox()),
            "rotation": page.get_rotation(),
            "size": list(image.size),
            "scale": fitted,
        }
    finally:
        pdf.close()


def main(argv: list[str]) -> None:
    pdf_path, page, scale, max_pixels, memory_mb, cpu_s, out = argv
    limit_resources(int(memory_mb), int(cpu_s))
    print(json.dumps(render(pdf_path, int(page), float(scale), int(max_pixels), out)))


if __name__ == "__main__":
    main(sys.argv[1:])
