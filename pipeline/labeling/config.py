"""The labeling config (Label Studio's XML) for one modality, and its version.

One project per modality: Label Studio shows every object tag of a config on every task, so an image task in a
project that also has an ``<Audio>`` tag would show a broken player. Image-text tasks go to the project named
``--project``, audio-text tasks to ``<name> (audio)``. Every config asks the same three things: does the text match
the medium (``match`` / ``no match``), the corrected text (empty when it is right) and a "contains personal data"
flag. The version is a digest of the XML; every imported label records the version it was made under.
"""

from __future__ import annotations

import hashlib
from typing import Literal
from xml.sax.saxutils import quoteattr

from mmcurate.pipeline.labeling.select import LabelingError

Modality = Literal["image", "audio"]
MODALITIES: tuple[Modality, ...] = ("image", "audio")

# the names results carry (from_name); the importer reads these and nothing else
MATCH_FIELD, TEXT_FIELD, PERSONAL_FIELD = "match", "corrected_text", "personal_data"
MATCH_CHOICES = {"match": "match", "no match": "no_match"}  # the UI's word -> the verdict stored
PERSONAL_CHOICE = "contains personal data"
TITLE_LIMIT = 50  # characters: Label Studio refuses a longer project title
TITLE_MIN = 3  # and a shorter one (its answer says why, past the 200 characters of it an error line shows)


def project_title(name: str, modality: Modality) -> str:
    return name if modality == "image" else f"{name} (audio)"


def project_name(name: str) -> str:
    """``--project`` as the titles will be: Label Studio strips a title's spaces (compared unstripped, the project
    would be made again on every export) and refuses one under ``TITLE_MIN`` or over ``TITLE_LIMIT`` characters (checked here, before
    anything is written: else the image project and its tasks are made, then the audio one fails)."""
    stripped = name.strip()
    if not stripped:
        raise LabelingError("the project name is empty")
    if len(stripped) < TITLE_MIN:
        raise LabelingError(f"the project name is too short: {stripped!r} has {len(stripped)} character(s), Label "
                            f"Studio takes titles of at least {TITLE_MIN}")
    longest = max((project_title(stripped, m) for m in MODALITIES), key=len)
    if len(longest) > TITLE_LIMIT:
        raise LabelingError(f"the project name is too long: {longest[:60]!r}{'...' if len(longest) > 60 else ''} "
                            f"has {len(longest)} characters, Label Studio takes at most {TITLE_LIMIT} "
                            f"(so a name of at most {TITLE_LIMIT - len(longest) + len(stripped)})")
    return stripped


def labeling_config(modality: Modality) -> str:
    """The XML of the project for ``modality``'s samples: the medium, the pipeline's text, the three questions."""
    medium, text_name, question, hint = {
        "image": ("<Image name=\"image\" value=\"$image\" maxWidth=\"512px\"/>", "caption",
                  "Does the caption describe the image?", "corrected caption (leave empty if it is right)"),
        "audio": ("<Audio name=\"audio\" value=\"$audio\"/>", "transcript",
                  "Does the transcript say what the audio says?", "corrected transcript (leave empty if it is right)"),
    }[modality]
    choices = "".join(f"<Choice value={quoteattr(word)}/>" for word in MATCH_CHOICES)
    return (
        "<View>"
        f"{medium}"
        f"<Header value={quoteattr(question)}/>"
        f"<Text name=\"{text_name}\" value=\"$text\"/>"
        f"<Choices name=\"{MATCH_FIELD}\" toName=\"{modality}\" choice=\"single\" required=\"true\" "
        f"showInline=\"true\">{choices}</Choices>"
        f"<TextArea name=\"{TEXT_FIELD}\" toName=\"{text_name}\" editable=\"true\" maxSubmissions=\"1\" "
        f"placeholder={quoteattr(hint)}/>"
        f"<Choices name=\"{PERSONAL_FIELD}\" toName=\"{modality}\" choice=\"multiple\">"
        f"<Choice value={quoteattr(PERSONAL_CHOICE)}/></Choices>"
        "<Text name=\"sample\" value=\"$key\"/>"
        "</View>"
    )


def config_version(xml: str) -> str:
    return hashlib.sha256(xml.encode()).hexdigest()[:12]


def match_prediction(modality: Modality, verdict: str) -> dict:
    """One result of a prediction or annotation: the match question answered ``verdict`` (match / no_match)."""
    word = next(w for w, v in MATCH_CHOICES.items() if v == verdict)
    return {"from_name": MATCH_FIELD, "to_name": modality, "type": "choices", "value": {"choices": [word]}}
