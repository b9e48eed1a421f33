"""Findings → redacted text with Presidio's anonymizer, one operator per entity type (the workflow's)."""

from __future__ import annotations

import os

from mmcurate.schemas.stage_configs import PiiConfig
from mmcurate.stages.pii.analyzer import Finding

MIN_SALT_BYTES = 16  # Presidio's hash operator refuses shorter salts


class Redactor:
    def __init__(self, config: PiiConfig):
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import OperatorConfig

        from mmcurate.stages.base import InputError

        self.engine = AnonymizerEngine()
        self.operators = {}
        for entity, rule in config.entities.items():
            if rule.operator == "replace":
                self.operators[entity] = OperatorConfig("replace", {"new_value": f"<{entity}>"})
            elif rule.operator == "mask":
                # masks the whole value: chars_to_mask past its length masks every character
                self.operators[entity] = OperatorConfig("mask", {"masking_char": "*", "chars_to_mask": 10_000,
                                                                 "from_end": False})
            elif rule.operator == "hash":
                salt = os.environ.get(config.salt_env, "")
                if len(salt.encode()) < MIN_SALT_BYTES:
                    raise InputError(f"pii: {entity} is hashed, which needs a per-run salt of at least "
                                     f"{MIN_SALT_BYTES} bytes in the environment variable {config.salt_env}")
                self.operators[entity] = OperatorConfig("hash", {"hash_type": "sha256", "salt": salt})
        self.drop = {entity for entity, rule in config.entities.items() if rule.operator == "drop"}

    def redact(self, text: str, findings: list[Finding]) -> str:
        """``text`` with every finding replaced by its operator's output (drop-operator findings included: the
        sample is rejected, and its reject row carries no text)."""
        if not findings:
            return text
        from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

        results = [RecognizerResult(f.entity_type, f.start, f.end, f.score) for f in findings]
        operators = {**self.operators, **{e: OperatorConfig("replace", {"new_value": f"<{e}>"}) for e in self.drop}}
        return self.engine.anonymize(text=text, analyzer_results=results, operators=operators).text
