"""Reading PNG and JPEG files, one or a folder of them, as 32x32 RGB images for predict.

Pillow is an optional extra, imported here only when an image is read. Every image becomes the
uint8 (N, 32, 32, 3) layout of a private ``.npy`` set:

* The camera's orientation (the EXIF tag of photographs) is applied first.
* Colour: grey, palette and CMYK images are converted to RGB; an alpha channel (RGBA, grey with
  alpha, a palette with a transparent colour) is composited on white, so that transparent
  parts look like the page they were drawn on rather than black; 16-bit grey keeps its top
  8 bits.
* Size: an image that is not 32x32 is resized, whole (the aspect ratio is not kept and nothing is
  cropped), with Pillow's bicubic filter, whose support widens with the scale so that shrinking a
  photograph averages its pixels instead of aliasing. One note says how many were resized.
* A folder is read without its subfolders, files ending in .png, .jpg or .jpeg (any case),
  sorted by name. Files that cannot be read (not an image, truncated, empty, or over Pillow's
  decompression-bomb limit, Image.MAX_IMAGE_PIXELS) are skipped and named in one warning; a folder
  with no readable image, or a single file given that is unreadable, is refused.
"""
import os
import struct
import sys
import warnings

import numpy as np

from trainer.data.errors import DataError, reason

EXTENSIONS = (".png", ".jpg", ".jpeg")
SIZE = 32
PILLOW_MISSING = ("reading PNG/JPEG files needs Pillow: pip install pillow (or pip install -r "
                  "requirements-dev.txt)")
NAMED = 10  # the most files a message names one by one


def is_image_source(path: str) -> bool:
    """Whether --private_data ``path`` means image files: a folder, or a .png/.jpg/.jpeg name."""
    return os.path.isdir(path) or path.lower().endswith(EXTENSIONS)


def image_paths(path: str) -> list:
    """The image files ``path`` stands for, in reading order: the file itself, or a folder's
    .png/.jpg/.jpeg files (not its subfolders') sorted by name. A folder with none is refused."""
    if not os.path.isdir(path):
        return [path]
    try:
        entries = [e for e in os.scandir(path) if e.name.lower().endswith(EXTENSIONS)]
    except OSError as e:
        raise DataError(f"folder {path} cannot be listed ({e.strerror}); check its "
                        f"permissions.") from None
    files = sorted(e.name for e in entries if e.is_file())
    if not files:
        raise DataError(f"folder {path} holds no PNG or JPEG files (.png, .jpg, .jpeg); pass "
                        f"--private_data a folder of images, an image or an .npy file.")
    return [os.path.join(path, name) for name in files]


def _pillow():
    """Pillow's Image and ImageOps modules, or a DataError saying how to install Pillow."""
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise DataError(PILLOW_MISSING) from None
    return Image, ImageOps


def _to_rgb(img, Image):
    """img as an RGB image: alpha composited on white, 16-bit grey cut to its top 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey PNGs open as one of these
        grey = np.asarray(img).astype(np.int64) >> 8
        img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _read_one(path: str, Image, ImageOps):
    """(uint8 (32, 32, 3) array, (width, height) of the file's image) of one image file; Pillow's
    errors, and its decompression-bomb warning, pass to the caller."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # Only the PNG and JPEG decoders are tried (phones' multi-picture JPEGs open as MPO).
        with Image.open(path, formats=("PNG", "JPEG")) as img:
            size = img.size
            if img.format in ("JPEG", "MPO"):  # decode a large photograph at a reduced scale
                img.draft("RGB", (SIZE, SIZE))
            img.load()
            img = _to_rgb(ImageOps.exif_transpose(img), Image)
            if img.size != (SIZE, SIZE):
                resampling = getattr(Image, "Resampling", Image)  # Pillow < 9.1 has no Resampling
                img = img.resize((SIZE, SIZE), resampling.BICUBIC)
            return np.asarray(img, dtype=np.uint8), size


def _unreadable_reason(e: BaseException, file: str, Image) -> str:
    """Why Pillow could not read file, in a few words without the file's path."""
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"over Pillow's limit of {Image.MAX_IMAGE_PIXELS} pixels"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return reason(e).replace(f" {file!r}", "")


def _listing(items: list) -> str:
    """'a (why), b (why)', naming at most NAMED of them."""
    shown = ", ".join(f"{name} ({why})" for name, why in items[:NAMED])
    return shown + (f" and {len(items) - NAMED} more" if len(items) > NAMED else "")


def _print_notes(count: int, resized: list, skipped: list) -> None:
    """One warning (stderr) naming the files skipped, one note saying how many were resized."""
    if skipped:
        what = "files that are not readable images" if len(skipped) > 1 else \
            "file that is not a readable image"
        print(f"warning: skipped {len(skipped)} {what}: {_listing(skipped)}", file=sys.stderr,
              flush=True)
    if resized:
        examples = ", ".join(list(dict.fromkeys(f"{w}x{h}" for w, h in resized))[:3])
        print(f"note: {len(resized)} of {count} images were not {SIZE}x{SIZE} (e.g. {examples}) "
              f"and were resized to {SIZE}x{SIZE}", flush=True)


def read_image_files(path: str):
    """Read the PNG/JPEG file ``path``, or the image files of folder ``path`` ->
    (uint8 (N, 32, 32, 3) images, their file names: relative to the folder, or the file's name).

    See the module's docstring for how images are converted and which files are skipped. Prints
    one note if images were resized and one warning (on stderr) naming the files skipped.
    """
    folder = os.path.isdir(path)
    if not folder and not os.path.lexists(path):
        raise DataError(f"private data file {path} does not exist; pass --private_data an .npy "
                        f"file, an image or a folder of images.")
    if not folder and not os.path.isfile(path):
        raise DataError(f"{path} is not a regular file; pass --private_data an image, a folder of "
                        f"images or an .npy file.")
    paths = image_paths(path)
    Image, ImageOps = _pillow()
    images, names, resized, skipped = [], [], [], []
    for file in paths:
        name = os.path.basename(file)
        try:
            image, size = _read_one(file, Image, ImageOps)
        # Pillow raises these on broken files: OSError (UnidentifiedImageError, truncated data),
        # and, from its decoders' parsers, ValueError, SyntaxError, EOFError, struct.error and
        # IndexError; the decompression-bomb warning is raised as an error above.
        except (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, MemoryError,
                Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            why = _unreadable_reason(e, file, Image)
            if not folder:
                raise DataError(f"{path} is not a readable PNG or JPEG image ({why}); pass "
                                f"--private_data an image, a folder of images or an .npy "
                                f"file.") from None
            skipped.append((name, why))
            continue
        images.append(image)
        names.append(name)
        if size != (SIZE, SIZE):
            resized.append(size)
    if not images:
        raise DataError(f"none of the {len(paths)} image files in folder {path} is readable: "
                        f"{_listing(skipped)}.")
    _print_notes(len(images), resized, skipped)
    return np.stack(images), names


def to_rows(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) images -> (N, 3072) float32 rows in the official layout (the red plane,
    then green, then blue), as the private .npy reader returns them."""
    n = len(images)
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(n, 3 * SIZE * SIZE),
                                dtype=np.float32)
