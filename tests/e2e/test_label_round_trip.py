"""The labeling round trip on the demo, through the real ``mmcurate`` command and a real Label Studio server
(``label_studio`` in tests/conftest.py): export the 20 samples nearest the filter's threshold with the filter's
predictions, annotate them through the SDK as a person does in the UI (reject some the filter kept, accept some it
dropped, correct two captions), import, run the demo again. Then the funnel shows the label drops (``label_rejected``
at ``apply_labels``) and keeps (``clip_score_low`` fewer by the accepted), the shards carry the corrected captions,
``label report`` prints the filter's precision and recall against the people, a second export adds no task, and the
server's token is in no file of the run directory and in no log.

The demo run is the filter's ground-truth run (tests/e2e/conftest.py, 400 pages), labelled and re-run after
``test_filter_ground_truth.py`` has judged it (file order): the re-run re-scores from ``apply_labels`` on, never
retrains the filter and fetches nothing.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from e2e_helpers import mmcurate_command, user_env

pytestmark = pytest.mark.e2e

N = 20
CORRECTED = {0: "a photo corrected by a person, first", 1: "a photo corrected by a person, second"}


def _label_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*mmcurate_command(), "label", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def _clip_low(run: Path) -> set[str]:
    table = pads.dataset(str(run / "rejects" / "clip_score")).to_table(columns=["key", "reason"])
    return {k for k, r in zip(table["key"].to_pylist(), table["reason"].to_pylist()) if r == "clip_score_low"}


def _duplicate_group_of(run: Path) -> dict[str, str]:
    """Every key in a group of copies → one key standing for the group. Transitively: a drop names its survivor at
    that method, and the survivor of an exact group may itself be dropped by the perceptual method after it."""
    drops = pq.read_table(run / "dedupe" / "artifacts" / "drops.parquet", columns=["key", "other"])
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for key, other in zip(drops["key"].to_pylist(), drops["other"].to_pylist()):
        parent[root(key)] = root(other)
    return {key: root(key) for key in list(parent)}


@pytest.fixture(scope="module")
def round_trip(filter_demo_run, label_studio):
    from label_studio_sdk import LabelStudio

    url, token = label_studio
    demo, run = filter_demo_run, filter_demo_run.run
    env = {**user_env(), "LABEL_STUDIO_URL": url, "LABEL_STUDIO_API_KEY": token}
    project = f"round trip {uuid.uuid4().hex[:6]}"
    outputs: list[str] = []

    def label(*args: str) -> str:
        done = _label_cli(*args, env=env, cwd=demo.cwd)
        outputs.extend((done.stdout, done.stderr))
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    low_before = _clip_low(run)
    first = label("export", str(run), "--project", project, "--select", "near-threshold", "--n", str(N))
    assert f"{project}: added {N} task(s), 0 already there" in first, first

    # a person in the UI: the prediction pre-fills the match question; they change it on some tasks
    ls = LabelStudio(base_url=url, api_key=token)
    person = ls.users.whoami().email
    (remote,) = [p for p in ls.projects.list(title=project) if p.title == project]
    tasks = sorted((t.dict() for t in ls.tasks.list(project=remote.id, fields="all")), key=lambda t: t["data"]["key"])
    assert len(tasks) == N and all(t["predictions"] for t in tasks)
    below = [t for t in tasks if t["predictions"][0]["result"][0]["value"]["choices"] == ["no match"]]
    # corrected: two accepted samples that share their group of copies with no other task (dedupe keeps a sample a
    # person accepted before its copies, whatever it scores; between two accepted copies the score decides, and a
    # new caption moves it); the 3 dropped against the filter are taken from the others first
    group = _duplicate_group_of(run)
    groups = [group.get(t["data"]["key"], t["data"]["key"]) for t in tasks]
    alone_in_group = {t["data"]["key"] for t, g in zip(tasks, groups) if groups.count(g) == 1}
    above = sorted((t for t in tasks if t not in below), key=lambda t: (t["data"]["key"] in alone_in_group,
                                                                       t["data"]["key"]))
    assert len(below) >= 4 and len(above) >= 4, (len(below), len(above))
    verdicts: dict[str, str] = {}
    for i, t in enumerate(below):
        verdicts[t["data"]["key"]] = "match" if i < 3 else "no match"  # 3 kept against the filter
    for i, t in enumerate(above):
        verdicts[t["data"]["key"]] = "no match" if i < 3 else "match"  # 3 dropped against the filter
    correctable = [t for t in above[3:] if t["data"]["key"] in alone_in_group]
    assert len(correctable) >= 2, "fewer than two accepted samples without another task among their copies"
    corrected = {correctable[i]["data"]["key"]: text for i, text in CORRECTED.items()}
    for t in tasks:
        key = t["data"]["key"]
        result = [{"from_name": "match", "to_name": "image", "type": "choices", "value": {"choices": [verdicts[key]]}}]
        if key in corrected:
            result.append({"from_name": "corrected_text", "to_name": "caption", "type": "textarea",
                           "value": {"text": [corrected[key]]}})
        ls.annotations.create(id=t["id"], result=result, lead_time=4.2)

    imported = label("import", str(run), "--project", project)
    rerun = demo.rerun("rerun.log")
    rerun_log = (demo.cwd / "rerun.log").read_text(errors="replace")
    assert rerun.returncode == 0, rerun_log[-5000:]
    second = label("export", str(run), "--project", project, "--select", "near-threshold", "--n", str(N))
    reported = label("report", str(run))
    explained = {key: subprocess.run([*mmcurate_command(), "explain", str(run), key], capture_output=True, text=True,
                                     env=env, timeout=300, check=True).stdout
                 for key in (next(iter(corrected)), below[0]["data"]["key"], above[0]["data"]["key"])}
    return {"run": run, "cwd": demo.cwd, "token": token, "person": person, "verdicts": verdicts, "corrected": corrected,
            "below": {t["data"]["key"] for t in below}, "low_before": low_before, "imported": imported,
            "rerun_log": rerun_log, "second": second, "reported": reported, "explained": explained,
            "outputs": outputs, "tasks_after": len(list(ls.tasks.list(project=remote.id, include="id")))}


def test_the_rerun_drops_the_rejected_and_keeps_the_accepted_without_retraining(round_trip):
    run, verdicts, below = round_trip["run"], round_trip["verdicts"], round_trip["below"]
    stats = json.loads((run / "stats.json").read_text())
    no_match = {k for k, v in verdicts.items() if v == "no match"}
    accepted_below = {k for k in below if verdicts[k] == "match"}
    assert stats["apply_labels"]["rejected"] == {"label_rejected": len(no_match)}
    # the funnel the command prints, and the line under it: the drops and the keeps against the filter
    assert "label_rejected" in round_trip["rerun_log"]
    scored = pads.dataset(str(run / "clip_score" / "data")).to_table(columns=["key", "scores", "human_match"]).to_pylist()
    kept_below = {r["key"] for r in scored if r["human_match"] and any(v < 0.47 for _, v in r["scores"])}
    assert accepted_below <= kept_below  # and the corrected captions, if their new text scores low
    assert (f"apply_labels: {len(no_match)} dropped by people (label_rejected={len(no_match)}), 2 text(s) corrected; "
            f"clip_score: {len(kept_below)} kept by people below the threshold") in round_trip["rerun_log"]
    rejected = pads.dataset(str(run / "rejects" / "apply_labels")).to_table().to_pylist()
    assert {r["key"] for r in rejected} == no_match
    assert all(f"labelled no match by {round_trip['person']} at " in r["detail"] for r in rejected)
    # the accepted ones clip_score would drop are kept, below their threshold; the rejected ones never reach it
    low_after = _clip_low(run)
    assert not (accepted_below | no_match) & low_after
    assert low_after == round_trip["low_before"] - accepted_below - no_match
    kept = set(pads.dataset(str(run / "clip_score" / "data")).to_table(columns=["key"])["key"].to_pylist())
    assert accepted_below <= kept
    manifest = {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}
    assert manifest["crawl"] == manifest["align"] == manifest["train_filter"] == "reused"
    assert manifest["apply_labels"] == manifest["clip_score"] == "ran"


def test_the_shards_carry_the_corrected_captions(round_trip):
    run, corrected = round_trip["run"], round_trip["corrected"]
    index = pads.dataset([str(p) for p in sorted((run / "shards").glob("*.parquet")) if not p.name.startswith("_")])
    rows = {r["key"]: r for r in index.to_table(columns=["key", "caption"]).to_pylist() if r["key"] in corrected}
    assert set(rows) == set(corrected)
    for key, row in rows.items():
        assert row["caption"] == corrected[key]
    for tar_path in sorted((run / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                if key in rows and ext == "txt":
                    assert tar.extractfile(member).read().decode() == corrected[key]


def test_label_report_prints_precision_and_recall_against_the_people(round_trip):
    out, verdicts, below = round_trip["reported"], round_trip["verdicts"], round_trip["below"]
    # the filter dropped `below`; people said no match to 3 of those above and to the rest of those below
    tp = sum(1 for k in below if verdicts[k] == "no match")
    fn = sum(1 for k, v in verdicts.items() if v == "no match" and k not in below)
    assert f"precision: {tp / len(below):.3f}" in out and f"recall: {tp / (tp + fn):.3f}" in out, out
    assert "best threshold:" in out
    report = json.loads((round_trip["run"] / "labels" / "report.json").read_text())
    assert report["by_modality"]["image"]["judged"] == N


def test_explain_shows_the_label_who_made_it_and_when(round_trip):
    for key, out in round_trip["explained"].items():
        line = next(line for line in out.splitlines() if line.startswith("[labels] "))
        verdict = "match" if round_trip["verdicts"][key] == "match" else "no match"
        assert line.startswith(f"[labels] {verdict} by {round_trip['person']} at 20"), out
        assert "Label Studio task" in line and "labeling config" in line
    corrected_key = next(iter(round_trip["corrected"]))
    assert round_trip["corrected"][corrected_key] in round_trip["explained"][corrected_key]


def test_a_second_export_adds_no_task(round_trip):
    assert f"added 0 task(s), {N} already there" in round_trip["second"], round_trip["second"]
    assert round_trip["tasks_after"] == N


def test_the_token_is_in_no_file_under_the_run_directory_and_in_no_log(round_trip):
    token = round_trip["token"].encode()
    searched = 0
    for root in (round_trip["run"], round_trip["cwd"]):  # the run directory; the demo and re-run logs beside it
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                searched += 1
                assert token not in path.read_bytes(), path
    assert searched > 100
    assert (round_trip["run"] / "labels" / "labels.parquet").exists()
    assert not any(round_trip["token"] in text for text in round_trip["outputs"])
    labels = pq.read_table(round_trip["run"] / "labels" / "labels.parquet")
    assert labels.num_rows == N
