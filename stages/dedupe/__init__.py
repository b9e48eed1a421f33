"""Dedupe and eval-set decontamination as one global stage (``stage.DedupeStage``); see ``stage.py``."""
