"""What metadata an emitted file carries, read back with the libraries that write it (Pillow for images,
mutagen for audio): the check behind "no EXIF, XMP, IPTC, GPS or comments in any emitted image, no tags in
emitted audio".

Images leave align re-encoded by OpenCV (``stages/align/image.py``, every ``image_format``, ``keep`` included)
and the pii stage re-encodes a blurred one the same way: ``cv2.imencode`` writes a JFIF header (JPEG) or the
IHDR/IDAT chunks (PNG) and nothing else. FLAC clips are written by libsndfile, whose only comment block holds its
vendor string, no tag. These functions prove it on the bytes.
"""

from __future__ import annotations

import io

# Pillow info keys that describe the encoding, not the picture's history or owner
_HARMLESS_INFO = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "progressive", "progression",
                  "adobe", "adobe_transform", "gamma", "interlace", "aspect", "transparency"}


def image_metadata(data: bytes) -> list[str]:
    """The metadata blocks of an encoded image: ``exif``, ``gps``, ``xmp``, ``iptc``, ``comment``, ``icc_profile``,
    JPEG APPn segments past APP0 (``APP1``, ``APP13``, ...) and PNG text chunks (``text:<keyword>``). Empty: none."""
    from PIL import Image, IptcImagePlugin, JpegImagePlugin, PngImagePlugin

    found: list[str] = []
    with Image.open(io.BytesIO(data)) as image:
        info = dict(image.info)
        exif = image.getexif()
        if len(exif):
            found.append("exif")
        if exif.get_ifd(0x8825):  # the GPS IFD
            found.append("gps")
        if isinstance(image, JpegImagePlugin.JpegImageFile):
            for marker, _ in image.applist:
                if marker != "APP0":
                    found.append(marker)
            if IptcImagePlugin.getiptcinfo(image):
                found.append("iptc")
        if isinstance(image, PngImagePlugin.PngImageFile):
            found += [f"text:{key}" for key in image.text]
        for key in info:
            if key in ("exif", "xmp", "XML:com.adobe.xmp", "comment", "icc_profile", "photoshop"):
                found.append("xmp" if key == "XML:com.adobe.xmp" else key)
            elif key not in _HARMLESS_INFO and not isinstance(image, PngImagePlugin.PngImageFile):
                found.append(key)
    return sorted(set(found))


def audio_tags(data: bytes) -> list[str]:
    """The tags of an encoded audio file (Vorbis comments, ID3 frames, embedded pictures). Empty: none."""
    import mutagen

    parsed = mutagen.File(io.BytesIO(data))
    if parsed is None:
        raise ValueError("mutagen does not recognise this audio")
    found = [f"tag:{key}" for key in (parsed.tags.keys() if parsed.tags is not None else [])]
    found += ["picture"] * len(getattr(parsed, "pictures", []) or [])
    return found
