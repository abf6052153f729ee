"""Image helpers every backend and the evaluation share: any file PIL reads, as 8-bit RGB, and an
image's size from its header without decoding it."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

JPEG_MAGIC = b"\xff\xd8"
# start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic), whose
# segment holds the frame's height and width; C4 (DHT), C8 (JPG) and CC (DAC) are not frames
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_UNSIZED = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM and RSTn: markers without a length
JPEG_NO_FRAME = frozenset([0xDA, 0xD9])  # start of scan, end of image: no frame header past them


SIXTEEN_BIT = frozenset(["I;16", "I;16L", "I;16B", "I;16N"])


def open_rgb(source) -> Image.Image:
    """The image in ``source`` (a path, or the file's bytes) as 8-bit RGB."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    with Image.open(source) as im:
        return to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB: greyscale, CMYK, palette and alpha as PIL converts them; 16-bit greyscale
    scaled by its high byte (PIL's own conversion clips it at 255, a white image), as PIL reads
    16-bit colour PNGs and as the nvjpeg backend scales torchvision's 16-bit decode. Modes with
    no defined 8-bit scale (I, F) are excluded by the screening (loaders/scan.py)."""
    if im.mode in SIXTEEN_BIT:
        im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8))
    return im.convert("RGB")


def to_uint8_chw(im: Image.Image) -> "torch.Tensor":
    import torch  # here, not above: the packer reads images with this module and never needs torch

    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)


def jpeg_size(encoded) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking the marker segments (so an EXIF
    thumbnail's frame, inside an APP1 segment, is skipped); None for anything else, or a header
    it cannot read (a height defined later by a DNL marker, a truncated file). ``encoded``: the
    file's bytes, any buffer (bytes, a uint8 numpy array)."""
    data = memoryview(encoded).cast("B")
    if bytes(data[:2]) != JPEG_MAGIC:
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in JPEG_UNSIZED:
            at += 2
            continue
        if marker in JPEG_NO_FRAME:
            return None
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in JPEG_FRAMES:
            if length < 7 or at + 9 > len(data):
                return None
            height = int.from_bytes(data[at + 5:at + 7], "big")
            width = int.from_bytes(data[at + 7:at + 9], "big")
            return (width, height) if width and height else None
        at += 2 + length
    return None


def image_size(encoded) -> tuple[int, int]:
    """(width, height) of an encoded image, the size its decode has: a JPEG's frame header, or the
    header PIL reads for other formats (and JPEGs whose header :func:`jpeg_size` cannot read)."""
    size = jpeg_size(encoded)
    if size is not None:
        return size
    with Image.open(io.BytesIO(encoded)) as im:
        return im.size
