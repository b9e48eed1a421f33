"""The pii stage against naive Presidio on the same labelled captions (tests/pii/captions.py), in one process.

    .venv/bin/python tests/bench/bench_pii.py [--quick] [--n 600] [--repeat 5] [--plain 0.0]

* naive: one ``AnalyzerEngine.analyze`` + ``AnonymizerEngine.anonymize`` per caption, every default recognizer,
  over the same blank spaCy pipeline (no NER model installs offline), default score threshold;
* pii: ``PiiStage.process_table`` over the captions as one Arrow table in batches of the stage's ``batch_size``
  (analysis, precision filters, redaction, counts; faces off, there are no images).

Runs alternate (naive, pii, naive, ...) and each side's best of ``--repeat`` is kept: on a shared machine the
best run is the one least disturbed. ``--plain`` adds that fraction of plain captions (no digit, no @: what most
captions are), which the stage's pre-filter never hands to the engine. Also printed: recall per entity and clean
captions byte-identical for both sides, so the speed is compared at the recall each reaches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pii"))

import harness  # noqa: E402
from captions import ENTITIES, Caption, labelled_captions  # noqa: E402
from labelled import caption_table, score  # noqa: E402


def naive_engines():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider
    from presidio_anonymizer import AnonymizerEngine

    from mmcurate.stages.pii.analyzer import _blank_pipeline, _offline_tldextract

    _offline_tldextract()
    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": _blank_pipeline("en")}],
    }).create_engine()
    return AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"]), AnonymizerEngine()


def run_naive(analyzer, anonymizer, texts: list[str]) -> tuple[float, list, list[str]]:
    started = time.perf_counter()
    found, outputs = [], []
    for text in texts:
        results = analyzer.analyze(text, language="en")
        outputs.append(anonymizer.anonymize(text=text, analyzer_results=results).text)
        found.append([(r.entity_type, r.start, r.end) for r in results])
    return time.perf_counter() - started, found, outputs


def run_stage(stage, table) -> tuple[float, list[str]]:
    started = time.perf_counter()
    outputs: list[str] = []
    for offset in range(0, table.num_rows, stage.config.batch_size):
        outputs += stage.process_table(table.slice(offset, stage.config.batch_size))["caption"].to_pylist()
    return time.perf_counter() - started, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="600 captions, 2 repeats")
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--plain", type=float, default=0.0, help="fraction of plain captions added")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.repeat = 2
    captions = labelled_captions(args.n, seed=args.seed)
    if args.plain:
        from captions import SUBJECTS

        extra = round(len(captions) * args.plain / (1 - args.plain))
        captions += [Caption(SUBJECTS[i % len(SUBJECTS)].capitalize() + f", view {chr(97 + i % 26)}")
                     for i in range(extra)]
    texts = [c.text for c in captions]

    from mmcurate.schemas.stage_configs import FacesConfig, PiiConfig
    from mmcurate.stages.pii.stage import PiiStage

    analyzer, anonymizer = naive_engines()
    stage = PiiStage(PiiConfig(faces=FacesConfig(enabled=False)))
    stage.setup()
    table = caption_table(captions)
    run_naive(analyzer, anonymizer, texts[:50])  # warm both: first calls load phone metadata, compile patterns
    run_stage(stage, table.slice(0, 50))
    naive_s, stage_s = [], []
    for _ in range(args.repeat):
        seconds, naive_found, naive_out = run_naive(analyzer, anonymizer, texts)
        naive_s.append(seconds)
        seconds, stage_out = run_stage(stage, table)
        stage_s.append(seconds)
    stage_found = [[(f.entity_type, f.start, f.end) for f in fs] for fs in stage.analyzer.analyze(texts)]
    naive_score, stage_score = score(captions, naive_found, naive_out), score(captions, stage_found, stage_out)
    pii_rate, naive_rate = len(texts) / min(stage_s), len(texts) / min(naive_s)
    figures: dict[str, object] = {
        "pii_docs_per_s / naive_presidio_docs_per_s": pii_rate / naive_rate,
        "pii_docs_per_s": pii_rate,
        "naive_presidio_docs_per_s": naive_rate,
        "pii_docs_per_s_median": len(texts) / sorted(stage_s)[len(stage_s) // 2],
        "naive_presidio_docs_per_s_median": len(texts) / sorted(naive_s)[len(naive_s) // 2],
        "captions": len(texts),
        "clean_captions": stage_score.clean,
        "pii_clean_identical": stage_score.clean_identical_fraction,
        "naive_clean_identical": naive_score.clean_identical_fraction,
        "pii_min_recall": min(stage_score.recall.values()),
        "naive_min_recall": min(naive_score.recall.values()),
    }
    for entity in ENTITIES:
        figures[f"pii_recall_{entity}"] = stage_score.recall[entity]
        figures[f"naive_recall_{entity}"] = naive_score.recall[entity]
        figures[f"naive_precision_{entity}"] = naive_score.precision[entity]
    figures["pii_texts_skipped_by_prefilter"] = stage.analyzer.skipped
    harness.print_figures(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
