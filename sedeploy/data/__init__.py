"""Images in, for every stage: decoding (:mod:`.images`), preprocessing (:mod:`.transforms`), sets (:mod:`.sets`).

Image sets: a folder of images in, preprocessed float32 tensors out, for calibration now and evaluation later.

Layout
    A folder is read in one of two layouts. When image files sit directly in it,
    it is *flat*: every image under it (sub-folders included) is used and there
    are no labels. When it holds only sub-folders, it is torchvision's
    *ImageFolder* layout: each sub-folder is a class, class names are the sorted
    folder names (empty class folders included, so label numbers match
    torchvision's), and images are found recursively inside each class folder.
    Hidden files and folders (names starting with ``.``) are ignored, as are files
    whose extension is not in :data:`IMAGE_EXTENSIONS` (a README or a labels file
    beside the images is normal); those are counted in the report as ``ignored``.
    Files with an image extension that cannot be decoded are *skipped*: logged as
    a warning and listed in the report. Only regular files are read (links
    followed): an image-named pipe, socket or device, or a link to one or to
    nothing, is never opened (reading one would block or never end); the walk
    leaves it out and names all of them in one warning, ``skipped N files that are
    not regular files in FOLDER: a.png (a named pipe), ...``
    (``ImageSetReport.not_regular``). A file swapped for one after the walk is
    refused when opened (:func:`sedeploy.files.open_regular`), never waited on.

Decoding (:func:`load_image`)
    A path is opened by :func:`open_image_file`: a regular file of at most
    :func:`image_bytes_limit` bytes (8 per allowed pixel plus 16 MiB of metadata).
    The pixel count is read from the header and checked against ``max_pixels``
    before any pixel is decoded (default: the ``SEDEPLOY_MAX_IMAGE_PIXELS``
    environment variable, else :data:`DEFAULT_MAX_PIXELS`; Pillow itself refuses
    more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` whatever the limit). The first
    frame of an animated image is used and the EXIF orientation applied. Every
    mode is converted to ``L`` (1 channel) or ``RGB`` (3 channels): palette and
    CMYK through Pillow's conversions (no ICC colour management); 16-bit grayscale scaled to 8 bits (value / 257; Pillow's
    own conversion would clip at 255); 32-bit float pixels clipped to 0-255;
    images with transparency (RGBA, LA, PA, palette or RGB with a transparent
    colour) composited on **black**. Black is chosen because encoders store fully
    transparent pixels as (0, 0, 0, 0) in the common case, so the result equals
    the ``convert("RGB")`` of torchvision's ImageFolder loader, i.e. what a model
    trained that way saw; it is also the value center-crop padding uses. Colour
    images for a 1-channel model are converted with ITU-R 601-2 luma, grayscale
    images for a 3-channel model are replicated; neither is rejected.

Preprocessing (:func:`preprocess`)
    timm's eval transform as torchvision runs it on PIL images: resize the short
    side (one value; the long side is truncated as torchvision does) or to exactly
    (H, W) (two values), center crop (zero padding when the crop is larger), scale
    to [0, 1], normalise with mean and std, in float32, channels first.

Sampling and cache (:func:`load_image_set`)
    ``limit`` images are chosen by ranking every image's relative path by
    ``sha256(f"{seed}:{path}")`` and taking the lowest; they are then used in path
    order. The choice depends only on the seed and the file names, not on Python's
    or numpy's random generators, and adding one file to the folder changes the
    sample by at most one image. Sampled files that cannot be decoded are skipped,
    not replaced, so ``used`` can be below ``limit``.
    With ``cache_dir``, the preprocessed array is stored as
    ``images-<key>.npz``; the key is a SHA-256 over the sampled files' relative
    paths and contents, the class names, the preprocessing, the channels, limit,
    seed, ``max_pixels`` and Pillow's version. Files are hashed on every call (that
    is what makes a changed image invalidate the cache); on a hit nothing is
    decoded. Old entries are not removed.
"""

from __future__ import annotations

from sedeploy.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS_ENV,
    SUPPORTED_CHANNELS,
    BadImageError,
    ImageListing,
    ImageSetError,
    ImageTooLargeError,
    SkippedFile,
    UnreadableImageError,
    image_bytes_limit,
    images_decoded,
    list_images,
    listed_images_among,
    load_image,
    max_pixels_limit,
    not_regular_line,
    open_image_file,
    scan_images,
    to_channels,
)
from sedeploy.data.sets import (
    CACHE_FORMAT_VERSION,
    CalibrationSet,
    ImageSet,
    ImageSetReport,
    dataset_sha256,
    load_image_set,
)
from sedeploy.data.transforms import INTERPOLATIONS, MissingPreprocessingError, preprocess, preprocessing_for

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "MAX_PIXELS_ENV",
    "SUPPORTED_CHANNELS",
    "BadImageError",
    "CalibrationSet",
    "ImageListing",
    "ImageSet",
    "ImageSetError",
    "ImageSetReport",
    "ImageTooLargeError",
    "MissingPreprocessingError",
    "SkippedFile",
    "UnreadableImageError",
    "dataset_sha256",
    "image_bytes_limit",
    "images_decoded",
    "list_images",
    "listed_images_among",
    "load_image",
    "load_image_set",
    "max_pixels_limit",
    "not_regular_line",
    "open_image_file",
    "preprocess",
    "preprocessing_for",
    "scan_images",
    "to_channels",
]
