"""Label Studio tasks in its import format (a JSON list of ``{"data": …, "predictions": […]}``).

Media travel inside the task as data URIs (``data:image/jpeg;base64,…``). Why, against the alternatives:
  * Label Studio's local-files storage over the run directory would keep tasks small, but only works when the
    server runs on the machine holding the run directory, started with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED and
    a DOCUMENT_ROOT above it, and an ``s3://`` run directory needs cloud storage credentials given to the server;
  * media written by the export and served by us would need a server alive for as long as people label.
  A data URI works with any server, any run directory, and an offline ``--format json`` file, at the cost of size:
  the pipeline's images are capped by align (256 px in the demo: ~10-20 KB each) and clips by ``max_clip_s``, so a
  task is tens of KB, and imports are chunked below the server's request limit (``chunks``). A deployment
  labelling full-resolution media should point tasks at cloud storage instead.
A task carries the sample key (``data.key``: how a second export finds the tasks it made) and, when the sample
was scored, a prediction: the filter's verdict (score against threshold) with the score and the model id as
``model_version``.
"""

from __future__ import annotations

import base64
import json
from typing import Iterable, Iterator

from mmcurate.pipeline.labeling.config import match_prediction
from mmcurate.pipeline.labeling.select import Candidate

_MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif",
         "flac": "audio/flac", "wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg"}


def data_uri(payload: bytes, fmt: str | None) -> str:
    mime = _MIME.get((fmt or "").lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(payload).decode()}"


def task(candidate: Candidate, record: dict) -> dict:
    medium = candidate.modality
    data = {"key": candidate.key, "text": record["text"],
            medium: data_uri(record[medium], record[f"{medium}_format"])}
    if candidate.score is not None:
        data["clip_score"] = round(candidate.score, 6)  # a column people can sort by in the data manager
    out: dict = {"data": data}
    if candidate.auto_verdict is not None:
        out["predictions"] = [{"model_version": candidate.model, "score": candidate.score,
                               "result": [match_prediction(medium, candidate.auto_verdict)]}]
    return out


def chunks(tasks: Iterable[dict], max_tasks: int, max_bytes: int) -> Iterator[list[dict]]:
    """Tasks in import requests of at most ``max_tasks`` tasks and ``max_bytes`` of JSON (one task over the byte
    limit goes alone: the server, not we, says whether it fits)."""
    chunk: list[dict] = []
    size = 0
    for item in tasks:
        cost = len(json.dumps(item)) + 2
        if chunk and (len(chunk) >= max_tasks or size + cost > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk
