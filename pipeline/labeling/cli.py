"""``mmcurate label {export,import,report}``: the argparse builder ``mmcurate.pipeline.cli`` hooks in."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import traceback

from mmcurate.pipeline.labeling.select import SELECTIONS, LabelingError
from mmcurate.pipeline.labeling.server import TOKEN_VARIABLE


def _export(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.labeling.export import export

    result = export(args.run_dir, args.project, select=args.select, n=args.n, seed=args.seed, fmt=args.format,
                    out=args.out, url=args.url, max_tasks=args.max_tasks, max_mb=args.max_mb)
    print(f"selected {result.selected} sample(s) ({args.select})")
    for title, added in result.added.items():
        verb = "wrote" if args.format == "json" else "added"
        print(f"{title}: {verb} {added} task(s)"
              + (f", {result.already[title]} already there" if title in result.already else "")
              + (f", {result.removed[title]} duplicate(s) removed" if result.removed.get(title) else ""))
    for path in result.files:
        print(f"  {path}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.labeling.importer import import_labels

    summary = import_labels(args.run_dir, args.project, url=args.url)
    for title, got in summary["projects"].items():
        how = "since the last import" if got["incremental"] else "all"
        print(f"{title}: {got['tasks_read']} task(s) read ({how})")
    print(f"{summary['annotations_read']} annotation(s) read; {summary['labels']} label(s) in "
          f"{args.run_dir}/labels/labels.parquet (applied by the workflow's labels stage on the next run)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from mmcurate.pipeline.labeling.report import format_report, report

    print(format_report(report(args.run_dir)))
    return 0


_AUTH = re.compile(r"""(authorization['"]?\s*[:=]\s*['"]?)[^'",}\r\n]*""", re.IGNORECASE)
_SCHEME = re.compile(r"\b(Token|Bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
BODY_CHARS = 200  # of a server's answer in an error line: enough to say what went wrong, not a page


def redact(text: str) -> str:
    """``text`` without the token: its value wherever it appears (a proxy echoing the request's headers), any
    Authorization header's value, and anything after ``Token``/``Bearer``."""
    token = os.environ.get(TOKEN_VARIABLE)
    if token:
        text = text.replace(token, "***")
    return _SCHEME.sub(r"\1 ***", _AUTH.sub(r"\1***", text))


def _answer(err: "ApiError") -> str:
    body = err.body if isinstance(err.body, str) else json.dumps(err.body, default=str)
    if re.search(r"<(!doctype|html)", body or "", re.IGNORECASE):
        # the web UI answered, not the API: a URL ending in /api (the SDK adds it) or another server
        return (f"Label Studio answered {err.status_code} with an HTML page, not its API: pass the server's root "
                f"URL (without /api)")
    text = redact(" ".join(str(body).split()))  # before it is cut: a cut token would no longer match
    text = text if len(text) <= BODY_CHARS else text[:BODY_CHARS] + "..."
    return f"Label Studio answered {err.status_code}: {text}"


def _from_sdk(err: BaseException) -> bool:
    """Raised inside the SDK (parsing an answer it did not expect), not in our code (a bug: its traceback)."""
    return any("label_studio_sdk" in frame.filename for frame in traceback.extract_tb(err.__traceback__))


def _guarded(func):
    """The command's errors as one line: the workflow's (a run without clip_score, no token), the server's (an
    answer with its status and the start of what it said; an answer the SDK cannot read; no answer). No line names
    the token: every one is redacted (``redact``), for a proxy or server may echo the request's headers."""
    def run(args: argparse.Namespace) -> int:
        import httpx
        import pydantic
        from label_studio_sdk.core.api_error import ApiError

        from mmcurate.pipeline.rundir import RunDirBusy

        def fail(message: str, code: int) -> int:
            print(redact(f"error: {message}"), file=sys.stderr)
            return code

        if not getattr(args, "verbose", False):
            logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would bury the progress bar
        try:
            return func(args)
        except LabelingError as err:
            return fail(str(err), 2)
        except RunDirBusy as err:
            return fail(f"{err}; try again when it has finished", 1)
        except ApiError as err:
            return fail(_answer(err), 1)
        except httpx.HTTPError as err:
            return fail(f"cannot reach Label Studio ({type(err).__name__}: {err})", 1)
        except (TypeError, ValueError, KeyError, AttributeError, pydantic.ValidationError) as err:
            if not _from_sdk(err):
                return _traceback(err, 1)
            text = redact(" ".join(str(err).split()))[:BODY_CHARS]
            return fail(f"Label Studio's answer is not what its SDK expects ({type(err).__name__}: {text}); is "
                        f"the URL a Label Studio server's root?", 1)
        except Exception as err:
            return _traceback(err, 1)
        except KeyboardInterrupt as err:
            return _traceback(err, 130)
    return run


def _traceback(err: BaseException, code: int) -> int:
    """A bug (ours, or an answer our code did not expect) stays visible as its traceback, but redacted: its message
    may quote what the server sent, and a server or proxy may echo the request's Authorization header into any
    field (an annotation's time, say)."""
    print(redact("".join(traceback.format_exception(err))), end="", file=sys.stderr)
    return code


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive count")
    return value


def _megabytes(text: str) -> float:
    """``--max-mb``: a positive finite size (nan, inf or a negative one would send every task in one request, or
    none), refused before a project is made."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive size in MB")
    return value


def add_label_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    label = sub.add_parser("label", help="the Label Studio round trip: export tasks, import labels, report")
    commands = label.add_subparsers(dest="label_command", required=True)
    url_help = "Label Studio's URL (default: $LABEL_STUDIO_URL); the token is read from $LABEL_STUDIO_API_KEY only"

    export = commands.add_parser("export", help="export samples as Label Studio tasks with the filter's predictions")
    export.add_argument("run_dir")
    export.add_argument("--project", required=True, help="project title, stripped, at most 42 characters (audio tasks go to '<title> (audio)'; Label "
                        "Studio takes titles of at most 50)")
    export.add_argument("--select", choices=SELECTIONS, default="near-threshold")
    export.add_argument("--n", type=_positive, default=100, help="samples at most")
    export.add_argument("--seed", type=int, default=0, help="for --select random")
    export.add_argument("--format", choices=("server", "json"), default="server",
                        help="json: write Label Studio's import format (and the labeling config) without a server")
    export.add_argument("--out", help="folder for --format json (default DIR/labels/export)")
    export.add_argument("--url", help=url_help)
    export.add_argument("--max-tasks", type=_positive, default=1000, help="tasks per import request")
    export.add_argument("--max-mb", type=_megabytes, default=50.0, help="MB per import request (the server takes <= 200)")
    export.set_defaults(func=_guarded(_export))

    imp = commands.add_parser("import", help="read the project's annotations into DIR/labels/ (incrementally)")
    imp.add_argument("run_dir")
    imp.add_argument("--project", required=True)
    imp.add_argument("--url", help=url_help)
    imp.set_defaults(func=_guarded(_import))

    rep = commands.add_parser("report", help="the automatic filter's precision and recall against the labels")
    rep.add_argument("run_dir")
    rep.set_defaults(func=_guarded(_report))
    return label
