"""Export, import parsing and the report without a server: Label Studio's import format written by the real
``mmcurate label export --format json``, the results a person's annotation holds, the filter's figures."""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from labeling_helpers import committed_run, labels_table, record

from mmcurate.pipeline.labeling.config import labeling_config
from mmcurate.pipeline.labeling.importer import parse_result
from mmcurate.pipeline.labeling.report import format_report, report
from mmcurate.pipeline.labeling.tasks import chunks


def _mmcurate(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcurate.pipeline.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def run(tmp_path):
    scores = {"k0": 0.10, "k1": 0.44, "k2": 0.49, "k3": 0.51, "k4": 0.58, "k5": 0.90}
    records = [record(k, f"caption {k}", score=s if s >= 0.5 else None) for k, s in scores.items()]
    records.append(record("k6", ""))  # no text: nothing to judge a pairing by
    return committed_run(tmp_path / "run", records, low={k: s for k, s in scores.items() if s < 0.5})


def test_export_json_writes_label_studios_import_format_with_the_filters_predictions(run, tmp_path):
    out = _mmcurate("label", "export", str(run), "--project", "demo", "--format", "json", "--n", "4",
                    "--out", str(tmp_path / "x"))
    assert out.returncode == 0, out.stderr
    tasks = json.loads((tmp_path / "x" / "demo.json").read_text())
    # the 4 closest to the threshold 0.5, closest first
    assert [t["data"]["key"] for t in tasks] == ["k2", "k3", "k1", "k4"]
    k2 = tasks[0]
    assert k2["data"]["text"] == "caption k2" and k2["data"]["clip_score"] == pytest.approx(0.49)
    assert k2["data"]["image"].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(k2["data"]["image"].split(",", 1)[1])[:2] == b"\xff\xd8"  # the JPEG itself
    (prediction,) = k2["predictions"]
    assert prediction["model_version"] == "m-1" and prediction["score"] == pytest.approx(0.49)
    assert prediction["result"][0]["value"]["choices"] == ["no match"]
    assert tasks[1]["predictions"][0]["result"][0]["value"]["choices"] == ["match"]
    assert (tmp_path / "x" / "demo.xml").read_text() == labeling_config("image")


def test_a_json_export_records_its_tasks_so_their_labels_are_judged(run, tmp_path):
    out = _mmcurate("label", "export", str(run), "--project", "demo", "--format", "json", "--n", "4",
                    "--out", str(tmp_path / "x"))
    assert out.returncode == 0, out.stderr
    exported = {r["key"]: r for r in pq.read_table(run / "labels" / "exported.parquet").to_pylist()}
    assert sorted(exported) == ["k1", "k2", "k3", "k4"]
    assert exported["k2"]["score"] == pytest.approx(0.49) and exported["k2"]["task_id"] is None
    # imported by hand into Label Studio, annotated, then `label import`-ed: the report judges them
    pq.write_table(labels_table([{"key": "k1", "verdict": "no_match"}, {"key": "k4", "verdict": "match"}]),
                   run / "labels" / "labels.parquet")
    got = report(str(run))["by_modality"]["image"]
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (1, 0, 0, 1)


def test_an_export_of_a_run_directory_in_use_is_refused(run, tmp_path):
    from mmcurate.pipeline.labeling.export import export
    from mmcurate.pipeline.rundir import RunDir, RunDirBusy

    with RunDir(str(run)).locked(), pytest.raises(RunDirBusy):
        export(str(run), "demo", fmt="json", out=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_a_json_export_names_its_files_safely(run, tmp_path):
    out = _mmcurate("label", "export", str(run), "--project", "../a/b .", "--format", "json",
                    "--out", str(tmp_path / "x"))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["_a_b.json", "_a_b.xml"]


def test_export_rejected_and_all_select_what_they_say(run, tmp_path):
    _mmcurate("label", "export", str(run), "--project", "demo", "--format", "json", "--select", "rejected",
              "--out", str(tmp_path / "r"))
    assert sorted(t["data"]["key"] for t in json.loads((tmp_path / "r" / "demo.json").read_text())) == ["k0", "k1", "k2"]
    _mmcurate("label", "export", str(run), "--project", "demo", "--format", "json", "--select", "all",
              "--out", str(tmp_path / "a"))
    assert len(json.loads((tmp_path / "a" / "demo.json").read_text())) == 6  # k6 has no text


def test_export_without_a_token_says_where_it_is_read_from(run):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("LABEL_STUDIO")}
    out = _mmcurate("label", "export", str(run), "--project", "demo", "--url", "http://127.0.0.1:9", env=env)
    assert out.returncode == 2 and "LABEL_STUDIO_API_KEY" in out.stderr and "Traceback" not in out.stderr


def test_export_of_a_run_without_clip_score_is_an_error_not_a_traceback(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": [{"name": "crawl", "kind": "crawl"}]}))
    out = _mmcurate("label", "export", str(tmp_path), "--project", "demo", "--format", "json")
    assert out.returncode == 2 and "no clip_score stage" in out.stderr


def test_an_annotation_made_in_the_ui_reads_as_verdict_text_and_flag():
    result = [
        {"from_name": "match", "to_name": "image", "type": "choices", "value": {"choices": ["no match"]}},
        {"from_name": "corrected_text", "to_name": "caption", "type": "textarea", "value": {"text": [" a cat "]}},
        {"from_name": "personal_data", "to_name": "image", "type": "choices",
         "value": {"choices": ["contains personal data"]}},
    ]
    assert parse_result(result) == ("no_match", "a cat", True)
    assert parse_result([]) == (None, None, False)


def _textarea(text) -> list[dict]:
    return [{"from_name": "corrected_text", "to_name": "caption", "type": "textarea", "value": {"text": text}}]


def test_a_textarea_answer_in_any_shape_reads_as_one_text_or_none():
    # a plain string is one text, not its characters
    assert parse_result(_textarea("a dog on a beach")) == (None, "a dog on a beach", False)
    # items that are not strings are ignored; nothing usable corrects nothing
    assert parse_result(_textarea([None, 7])) == (None, None, False)
    assert parse_result(_textarea([None, " a dog ", 7, "  "])) == (None, "a dog", False)
    assert parse_result(_textarea({"x": 1})) == (None, None, False)
    assert parse_result([{"from_name": "match", "value": {"choices": [None]}}, {"from_name": "match"}]) == \
        (None, None, False)


def test_import_into_a_missing_run_directory_is_an_error_and_creates_nothing(tmp_path):
    env = {**__import__("os").environ, "LABEL_STUDIO_API_KEY": "t" * 40}
    missing = tmp_path / "typo"
    out = _mmcurate("label", "import", str(missing), "--project", "demo", "--url", "http://127.0.0.1:9", env=env)
    assert out.returncode == 2 and "no manifest.json" in out.stderr and "Traceback" not in out.stderr
    assert not missing.exists()


@pytest.mark.parametrize("command", ["export", "import"])
@pytest.mark.parametrize("name, says", [("   ", "project name is empty"), ("x" * 43, "at most 50"),
                                        (" ab ", "'ab' has 2 character(s), Label Studio takes titles of at least 3")])
def test_a_project_name_label_studio_would_change_or_refuse_is_refused_before_anything_is_written(
        run, command, name, says):
    env = {**__import__("os").environ, "LABEL_STUDIO_API_KEY": "t" * 40}
    out = _mmcurate("label", command, str(run), "--project", name, "--url", "http://127.0.0.1:9", env=env)
    # refused before the server is asked (none answers on port 9) and before DIR/labels/ is written
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (run / "labels").exists()


def _label_parser():
    from mmcurate.pipeline.labeling.cli import add_label_parser

    parser = argparse.ArgumentParser(prog="mmcurate")
    add_label_parser(parser.add_subparsers())
    return parser


@pytest.mark.parametrize("option, value, says", [
    ("--max-mb", "nan", "nan is not a positive size in MB"), ("--max-mb", "inf", "inf is not a positive size"),
    ("--max-mb", "-1", "-1 is not a positive size"), ("--max-mb", "0", "0 is not a positive size"),
    ("--max-mb", "lots", "'lots' is not a number"), ("--max-tasks", "0", "0 is not a positive count"),
    ("--max-tasks", "1.5", "'1.5' is not a whole number")])
def test_a_request_limit_that_is_not_positive_and_finite_is_a_usage_error(run, capsys, option, value, says):
    with pytest.raises(SystemExit) as stopped:
        _label_parser().parse_args(["label", "export", str(run), "--project", "demo", option, value])
    assert stopped.value.code == 2 and f"argument {option}: {says}" in capsys.readouterr().err
    assert _label_parser().parse_args(["label", "export", str(run), "--project", "demo", "--max-mb", "0.5"]).max_mb == 0.5


@pytest.mark.parametrize("max_tasks, max_mb", [(0, 50.0), (10, float("nan")), (10, float("inf")), (10, -1.0)])
def test_export_refuses_request_limits_before_anything_is_made(run, max_tasks, max_mb):
    from mmcurate.pipeline.labeling.export import export
    from mmcurate.pipeline.labeling.select import LabelingError

    with pytest.raises(LabelingError, match="must be a positive"):
        export(str(run), "demo", fmt="json", max_tasks=max_tasks, max_mb=max_mb)
    assert not (run / "labels").exists()


def test_a_run_directory_that_is_a_file_is_an_error_line(tmp_path):
    env = {**__import__("os").environ, "LABEL_STUDIO_API_KEY": "t" * 40}
    (tmp_path / "file").write_text("not a run")
    for command in (["export", "--format", "json"], ["import", "--url", "http://127.0.0.1:9"], ["report"]):
        project = ["--project", "demo"] if command[0] != "report" else []
        out = _mmcurate("label", command[0], str(tmp_path / "file"), *project, *command[1:], env=env)
        assert out.returncode == 2 and out.stderr == f"error: {tmp_path / 'file'}: not a directory (a run directory " \
            f"is one)\n", (command, out.stderr)


def test_chunks_stay_under_both_limits():
    tasks = [{"data": {"key": str(i), "blob": "x" * 1000}} for i in range(25)]
    parts = list(chunks(tasks, max_tasks=10, max_bytes=5_000))
    assert [t for part in parts for t in part] == tasks
    assert all(len(part) <= 10 and len(json.dumps(part)) <= 5_000 for part in parts)


def test_report_gives_precision_recall_and_the_threshold_that_matches_the_people(run):
    labels_dir = run / "labels"
    labels_dir.mkdir()
    # scores the tasks showed (threshold 0.5): the filter dropped k0, k1, k2
    shown = [{"key": k, "project": "p", "project_id": 1, "task_id": i, "modality": "image", "score": s,
              "threshold": 0.5, "model": "m-1", "auto_verdict": "match" if s >= 0.5 else "no_match",
              "text": "t", "label_config_version": "v", "exported_at": "now"}
             for i, (k, s) in enumerate({"k0": 0.1, "k1": 0.44, "k2": 0.49, "k3": 0.51, "k4": 0.58, "k5": 0.9}.items())]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(shown), labels_dir / "exported.parquet")
    # people: k0, k1, k3 no match; k2, k4, k5 match
    verdicts = {"k0": "no_match", "k1": "no_match", "k2": "match", "k3": "no_match", "k4": "match", "k5": "match"}
    pq.write_table(labels_table([{"key": k, "verdict": v} for k, v in verdicts.items()]), labels_dir / "labels.parquet")
    got = report(str(run))["by_modality"]["image"]
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 1, 1, 2)
    assert got["precision"] == pytest.approx(2 / 3) and got["recall"] == pytest.approx(2 / 3)
    # no cut gets all six right; 0.45 and 0.545 both get five; 0.545 has the higher F1 (0.857 against 0.8)
    assert got["at_best"]["agreement"] == pytest.approx(5 / 6)
    assert got["best_threshold"] == pytest.approx(0.545)
    text = format_report(report(str(run)))
    assert "precision: 0.667" in text and "recall: 0.667" in text and "best threshold: 0.5450" in text


def _shown_and_labelled(run, scores: dict[str, float], verdicts: dict[str, str]) -> None:
    import pyarrow as pa

    (run / "labels").mkdir(exist_ok=True)
    shown = [{"key": k, "project": "p", "project_id": 1, "task_id": i, "modality": "image", "score": s,
              "threshold": 0.5, "model": "m-1", "auto_verdict": "match" if s >= 0.5 else "no_match",
              "text": "t", "label_config_version": "v", "exported_at": "now"} for i, (k, s) in enumerate(scores.items())]
    pq.write_table(pa.Table.from_pylist(shown), run / "labels" / "exported.parquet")
    pq.write_table(labels_table([{"key": k, "verdict": v} for k, v in verdicts.items()]),
                   run / "labels" / "labels.parquet")


def test_each_sample_is_judged_at_the_threshold_applied_to_it(run):
    import pyarrow as pa

    (run / "labels").mkdir()
    # exported at threshold 0.3, then (after a re-run at 0.5) more: each drop agrees with the people at its own cut
    shown = [{"key": k, "project": "p", "project_id": 1, "task_id": i, "modality": "image", "score": s,
              "threshold": t, "model": "m-1", "auto_verdict": "match" if s >= t else "no_match", "text": "t",
              "label_config_version": "v", "exported_at": when}
             for i, (k, s, t, when) in enumerate([("a", 0.35, 0.3, "2026-01-01"), ("b", 0.25, 0.3, "2026-01-01"),
                                                  ("c", 0.45, 0.5, "2026-02-01"), ("d", 0.55, 0.5, "2026-02-01")])]
    pq.write_table(pa.Table.from_pylist(shown), run / "labels" / "exported.parquet")
    verdicts = {"a": "match", "b": "no_match", "c": "no_match", "d": "match"}
    pq.write_table(labels_table([{"key": k, "verdict": v} for k, v in verdicts.items()]),
                   run / "labels" / "labels.parquet")
    got = report(str(run))["by_modality"]["image"]
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (2, 0, 0, 2) and got["recall"] == 1.0
    assert got["threshold"] == 0.5 and got["thresholds"] == [0.3, 0.5]  # the latest export's is the current
    # one cut for all: 0.5 would also drop a (a match), 0.3 keep c (no match)
    assert got["at_best"]["agreement"] == 0.75
    text = format_report(report(str(run)))
    assert "thresholds 0.3, 0.5, each sample judged at its own; now 0.5" in text and "recall: 1.000" in text


def test_the_best_threshold_is_the_current_one_when_no_cut_does_better(run):
    # the filter agrees with every label: a midpoint (0.465 or 0.5) has the same figures, the current cut is kept
    _shown_and_labelled(run, {"k0": 0.43, "k1": 0.60}, {"k0": "no_match", "k1": "match"})
    got = report(str(run))["by_modality"]["image"]
    assert got["best_threshold"] == 0.5 and got["at_best"]["agreement"] == 1.0
    assert "best threshold: 0.5000" in format_report(report(str(run)))


def test_labels_of_one_class_suggest_no_threshold_and_say_why(run):
    _shown_and_labelled(run, {"k0": 0.43, "k1": 0.60, "k2": 0.7}, {k: "match" for k in ("k0", "k1", "k2")})
    got = report(str(run))["by_modality"]["image"]
    assert got["one_class"] and got["best_threshold"] == 0.5 and got["precision"] == 0.0 and got["recall"] is None
    text = format_report(report(str(run)))
    assert "all 'match'" in text and "none suggested: the labels hold one class only" in text


def test_labels_of_samples_not_exported_from_this_run_directory_are_counted_as_left_out(run):
    _shown_and_labelled(run, {"k0": 0.43, "k1": 0.60}, {"k0": "no_match", "k1": "match", "x1": "match",
                                                         "x2": "no_match"})
    got = report(str(run))
    assert got["not_exported"] == 2 and got["by_modality"]["image"]["judged"] == 2
    assert "2 label(s) with a verdict left out: their samples are not in exported.parquet" in format_report(got)
    _shown_and_labelled(run, {"k0": 0.43}, {"x1": "match"})
    out = _mmcurate("label", "report", str(run))
    assert out.returncode == 2 and "1 label(s) with a verdict left out" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture
def fake_server():
    """An HTTP server answering every request as ``answer(headers)`` says: (status, content type, body)."""
    import http.server
    import threading

    how: dict = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status, kind, body = how["answer"](dict(self.headers))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.end_headers()
            self.wfile.write(body.encode())
        do_POST = do_PATCH = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield how, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


TOKEN = "f00dfeed" * 5


def _against(run, url: str) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "LABEL_STUDIO_API_KEY": TOKEN}
    return _mmcurate("label", "import", str(run), "--project", "demo", "--url", url, env=env)


def test_a_proxy_echoing_the_request_headers_never_shows_the_token(run, fake_server):
    how, url = fake_server
    # the headers first (inside the part of the body an error line shows), then the token bare
    how["answer"] = lambda headers: (502, "application/json", json.dumps(
        {"request_headers": {k: v for k, v in headers.items() if k.lower() == "authorization"},
         "seen": f"token={TOKEN}", "padding": "x" * 1000}))
    out = _against(run, url)
    assert out.returncode == 1 and out.stderr.startswith("error: Label Studio answered 502: ")
    assert TOKEN not in out.stderr and TOKEN[:8] not in out.stderr and "***" in out.stderr
    assert len(out.stderr) < 400 and "Traceback" not in out.stderr


def test_an_answer_the_sdk_cannot_read_or_a_web_page_is_one_error_line(run, fake_server):
    how, url = fake_server
    how["answer"] = lambda headers: (200, "application/json", '{"count": "x", "results": 5}')
    out = _against(run, url)
    assert out.returncode == 1 and "not what its SDK expects" in out.stderr and "Traceback" not in out.stderr
    how["answer"] = lambda headers: (404, "text/html", "<!DOCTYPE html><html>" + "<p>page</p>" * 100 + "</html>")
    out = _against(run, url + "/api")
    assert out.returncode == 1 and "an HTML page, not its API" in out.stderr and "<p>" not in out.stderr


def test_redact_takes_out_the_token_and_authorization_values(monkeypatch):
    from mmcurate.pipeline.labeling.cli import redact

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    assert redact(f"x {TOKEN} y") == "x *** y"
    assert redact("{'Authorization': 'Bearer abcdefghijkl'}") == "{'Authorization': '***'}"
    assert redact("authorization: Token abcdefghijkl\n") == "authorization: ***\n"
    assert redact("sent Token abcdefghijkl") == "sent Token ***"


def _escaping(err: BaseException):
    from mmcurate.pipeline.labeling.cli import _guarded

    def command(args):
        try:
            raise RuntimeError(f"while reading {{'Authorization': 'Token {TOKEN}'}}")
        except RuntimeError as cause:
            raise err from cause
    return _guarded(command)


@pytest.mark.parametrize("err", [ValueError(f"Invalid isoformat string: 'Token {TOKEN}'"),  # our code's parse
                                 KeyError(f"Bearer {TOKEN}"), OSError(f"sent {TOKEN}")])
def test_a_bug_in_a_label_command_is_its_traceback_without_the_token(monkeypatch, capsys, err):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    assert _escaping(err)(argparse.Namespace()) == 1
    shown = capsys.readouterr().err
    # the bug stays visible (both exceptions, where they were raised), the secret does not
    assert shown.startswith("Traceback (most recent call last):") and "The above exception" in shown
    assert f"{type(err).__name__}: " in shown and "RuntimeError: while reading" in shown and "***" in shown
    assert TOKEN not in shown and TOKEN[:8] not in shown


def test_an_interrupted_label_command_shows_no_token_either(monkeypatch, capsys):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", TOKEN)
    assert _escaping(KeyboardInterrupt())(argparse.Namespace()) == 130
    shown = capsys.readouterr().err
    assert "KeyboardInterrupt" in shown and TOKEN[:8] not in shown
