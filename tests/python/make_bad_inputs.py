#!/usr/bin/env python3
"""Build input trees of awkward files for verger's bad-input tests.

usage: make_bad_inputs.py mixed DEST SAMPLE_DIR
       make_bad_inputs.py small DEST SAMPLE_DIR

`mixed` fills DEST (its last path segment is the "root label") with broken,
odd-but-valid and real sample images; `small` writes a few real images plus
down-scaled (60x60) copies for the --max-pixels test. Real images are copied
from SAMPLE_DIR (the Fruits-360 sample). Prints {"files": [relative paths]}
of everything written, including files the default glob does not match.
"""
import json
import os
import random
import shutil
import struct
import sys
import zlib

from PIL import Image


def sample_images(sample_dir, label, count, split="Test"):
    folder = os.path.join(sample_dir, split, label)
    names = sorted(n for n in os.listdir(folder) if n.endswith(".jpg"))
    return [os.path.join(folder, n) for n in names[:count]]


class Tree:
    def __init__(self, dest):
        self.dest = dest
        self.files = []

    def path(self, rel):
        p = os.path.join(self.dest, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        self.files.append(rel)
        return p

    def write(self, rel, data):
        with open(self.path(rel), "wb") as f:
            f.write(data)

    def copy(self, rel, src):
        shutil.copyfile(src, self.path(rel))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width, height):
    """A PNG whose IHDR claims width x height RGB8 but which carries no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def mixed(dest, sample_dir):
    t = Tree(dest)
    rng = random.Random(1234)
    src = sample_images(sample_dir, "Apple Braeburn", 1)[0]
    with Image.open(src) as im:
        rgb = im.convert("RGB")
    with open(src, "rb") as f:
        jpeg = f.read()

    # Broken: must end up in errors/.
    t.write("broken/empty.jpg", b"")
    t.write("broken/truncated.jpg", jpeg[: len(jpeg) // 3])
    t.write("broken/random.jpg", bytes(rng.getrandbits(8) for _ in range(4096)))
    t.write("broken/text.jpg", b"this is not an image, just some text\n" * 20)
    t.write("broken/huge.png", huge_png(50000, 50000))

    # Odd but valid: must end up in features/.
    rgb.save(t.path("odd/png_named.jpg"), format="PNG")
    rgb.convert("L").save(t.path("odd/gray.jpg"), format="JPEG", quality=90)
    rgb.convert("CMYK").save(t.path("odd/cmyk.jpg"), format="JPEG", quality=90)
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=64)
    pal.info["transparency"] = 0
    pal.save(t.path("odd/palette_alpha.png"), format="PNG", transparency=0)
    Image.new("RGB", (1, 1), (200, 30, 40)).save(t.path("odd/one_pixel.jpg"), format="JPEG")
    # 1.2 megapixels: valid, but over a --max-pixels of 1,000,000.
    rgb.resize((1200, 1000), Image.BILINEAR).save(t.path("odd/big.jpg"), format="JPEG", quality=85)
    # URL-special characters in a file name must survive as-is (no %-decoding).
    t.copy("odd/hash#and%20percent.jpg", src)

    # Real images: a file directly under the root, a folder with spaces and
    # non-ASCII characters, and a few ordinary label folders.
    t.copy("root level.jpg", sample_images(sample_dir, "Apricot", 1)[0])
    t.copy("Äpfel Grün/ñ 1.jpg", sample_images(sample_dir, "Apple Granny Smith", 1)[0])
    for label in ("Banana", "Kiwi", "Lemon"):
        for i, p in enumerate(sample_images(sample_dir, label, 2)):
            t.copy(f"{label}/{i}_{os.path.basename(p)}", p)

    # Not matched by '*.jpg' nor '*.{jpg,png}'.
    t.write("notes.txt", b"not an image\n")
    t.copy("Banana/photo.jpeg", sample_images(sample_dir, "Banana", 3)[2])
    return t.files


def small(dest, sample_dir):
    t = Tree(dest)
    for label in ("Orange", "Plum"):
        for i, p in enumerate(sample_images(sample_dir, label, 2)):
            with Image.open(p) as im:
                im.convert("RGB").resize((60, 60), Image.BILINEAR).save(
                    t.path(f"{label}/small_{i}.jpg"), format="JPEG", quality=90
                )
    for i, p in enumerate(sample_images(sample_dir, "Pear", 3)):
        t.copy(f"Pear/full_{i}.jpg", p)
    return t.files


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("mixed", "small"):
        sys.exit(__doc__)
    mode, dest, sample_dir = sys.argv[1:]
    files = (mixed if mode == "mixed" else small)(dest, sample_dir)
    json.dump({"files": files}, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
