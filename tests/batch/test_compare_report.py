"""What changed since earlier decisions (compare_results, `summary --against --changed`),
and the HTML report (`summary --report`) checked figure by figure against the results."""

from __future__ import annotations

import csv
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from facematch_async import BatchRunner, compare_results, job_state, read_manifest, write_report
from facematch_async.cli import main
from facematch_async.sandbox import SandboxServer, ScriptedResponse
from tests.helpers import CLIENT_SECRET, Faces, MakeClient, every_status_manifest


def pairs_manifest(faces: Faces, rows: dict[str, tuple[str, str]]) -> Path:
    manifest = faces.root / "pairs.csv"
    manifest.write_text(
        "pair_id,file_a,file_b\n" + "".join(f"{pid},{a},{b}\n" for pid, (a, b) in rows.items())
    )
    return manifest


@pytest.fixture
async def current(make_client: MakeClient, faces: Faces, tmp_path: Path) -> Path:
    """This run's results, from the sandbox: each pair's new decision is in its name."""
    faces.write("animated.jpg", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")
    manifest = pairs_manifest(
        faces,
        {
            "still-match": ("alice.png", "alice.jpg"),
            "now-no-match": ("alice.png", "bob.jpg"),
            "now-match": ("alice.png", "alice.jpg"),
            "now-no-face": ("landscape.png", "alice.jpg"),
            "now-error": ("animated.jpg", "alice.jpg"),
            "was-undecided": ("alice.png", "alice.jpg"),
            "new-pair": ("alice.png", "alice.jpg"),
        },
    )
    out = tmp_path / "current.jsonl"
    await BatchRunner(make_client(), rate_limit=None).run_to_file(read_manifest(manifest), out)
    return out


EXPORT = (
    "pair_id,match,confidence,reviewer\n"
    "still-match,true,97.5,ann\n"
    "now-no-match,TRUE,91%,ann\n"
    "now-match,false,12,bo\n"
    "now-no-face,yes,88,bo\n"
    "now-error,1,70,ann\n"
    "was-undecided,,,bo\n"
    "gone,true,99,ann\n"
    "dubious,maybe,50,bo\n"  # no readable decision: skipped, counted
    ",true,50,bo\n"  # no pair_id: skipped, counted
)


def test_an_export_against_this_run_gives_every_transition_and_the_changed_lines(
    current: Path, tmp_path: Path
) -> None:
    """match -> no_match, no_match -> match, match -> no_face, match -> error, undecided ->
    match, a new pair, a missing one: each counted; --changed holds one line per change
    with both decisions and confidences; unreadable rows are counted, not fatal."""
    previous = tmp_path / "export.csv"
    previous.write_text(EXPORT)
    changed = tmp_path / "changed.jsonl"
    comparison = compare_results(current, previous, changed=changed)
    assert dict(comparison.transitions) == {
        ("match", "match"): 1,
        ("match", "no_match"): 1,
        ("no_match", "match"): 1,
        ("match", "no_face"): 1,
        ("match", "error"): 1,
        ("undecided", "match"): 1,
        ("absent", "match"): 1,
        ("match", "absent"): 1,
    }
    assert (comparison.changed, comparison.unchanged) == (7, 1)
    assert (comparison.previous_pairs, comparison.previous_unreadable) == (7, 2)
    assert comparison.previous_kind == "export"
    lines = {r["pair_id"]: r for r in map(json.loads, changed.read_text().splitlines())}
    assert set(lines) == {
        "now-no-match", "now-match", "now-no-face", "now-error", "was-undecided", "new-pair",
        "gone",
    }  # fmt: skip
    assert lines["now-no-match"] == {
        "pair_id": "now-no-match",
        "change": "match -> no_match",
        "before": "match",
        "after": "no_match",
        "confidence_before": 91.0,
        "confidence_after": 12.0,
        "after_code": None,
        "retryable": None,
    }
    assert lines["now-error"]["after_code"] == "UNSUPPORTED_FILE_FORMAT"
    assert lines["now-error"]["retryable"] is False
    assert lines["gone"]["change"] == "missing (was match)" and lines["gone"]["after"] is None
    assert lines["new-pair"]["change"] == "new (match)" and lines["new-pair"]["before"] is None
    assert comparison.previous_confidence.count == 6  # the rows decided, with a confidence
    text = comparison.format()
    assert "match -> no_match" in text and "7 changed, 1 unchanged" in text


async def test_an_earlier_results_file_against_a_later_run(
    make_client: MakeClient, faces: Faces, tmp_path: Path
) -> None:
    """Two sandbox runs of one manifest, an image replaced between them: the comparison of
    the results files finds exactly the pairs whose decision flipped."""
    manifest = pairs_manifest(faces, {f"p{i}": (f"a{i}.png", "alice.jpg") for i in range(8)})
    for i in range(8):
        faces.write(f"a{i}.png", faces.alice_png.read_bytes())
    first, second = tmp_path / "2023.csv", tmp_path / "2024.jsonl"
    await BatchRunner(make_client(), rate_limit=None).run_to_file(read_manifest(manifest), first)
    for i in (2, 5):
        faces.write(f"a{i}.png", faces.bob_jpg.read_bytes())
    await BatchRunner(make_client(), rate_limit=None).run_to_file(read_manifest(manifest), second)
    comparison = compare_results(second, first, changed=tmp_path / "changed.csv")
    assert comparison.previous_kind == "results"
    assert dict(comparison.transitions) == {("match", "match"): 6, ("match", "no_match"): 2}
    assert comparison.examples[("match", "no_match")] == ["p2", "p5"]
    with open(tmp_path / "changed.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [(r["pair_id"], r["before"], r["after"]) for r in rows] == [
        ("p2", "match", "no_match"),
        ("p5", "match", "no_match"),
    ]


def test_summary_against_prints_the_transitions_and_writes_changed(
    current: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`summary --against export.csv --changed changed.jsonl`: the table on stdout, the
    changed lines on disk; exit 1 (an error line is in the results)."""
    previous = tmp_path / "export.csv"
    previous.write_text(EXPORT)
    changed = tmp_path / "changed.jsonl"
    code = main(["summary", str(current), "--against", str(previous), "--changed", str(changed)])
    out = capsys.readouterr().out
    assert code == 1
    assert "7 changed, 1 unchanged" in out
    assert re.search(r"match -> no_match\s+1", out) and re.search(r"new \(match\)\s+1", out)
    assert "missing (was match)" in out and "2 row(s) of" in out
    assert len(changed.read_text().splitlines()) == 7


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("noise.bin", bytes(range(256)) * 8, "not UTF-8"),
        ("no_id.csv", b"id,match\n1,true\n", "no pair_id column"),
        ("no_match.csv", b"pair_id,score\np,1\n", "no match column"),
        ("arrays.jsonl", b"[1, 2]\n" * 150, "not a results file or an export"),
        ("latin1.csv", "pair_id,match\ncaf\xe9,true\n".encode("latin-1"), "not UTF-8"),
    ],
)
def test_a_previous_file_of_another_format_is_one_line_never_a_traceback(
    current: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    says: str,
) -> None:
    """Noise, a CSV without pair_id or match, JSONL of arrays, Latin-1 bytes: exit 2 and
    one line saying what is wrong."""
    previous = tmp_path / name
    previous.write_bytes(content)
    assert main(["summary", str(current), "--against", str(previous)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("facematch-async summary: ")
    assert says in err and "Traceback" not in err


def test_bad_summary_options_are_usage_errors(
    current: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--changed without --against, a missing PREVIOUS, a directory, --changed or --report
    into a folder that does not exist: exit 2, one line each."""
    previous = tmp_path / "export.csv"
    previous.write_text(EXPORT)
    calls = [
        ["--changed", str(tmp_path / "c.jsonl")],
        ["--against", str(tmp_path / "absent.csv")],
        ["--against", str(tmp_path)],
        ["--against", str(previous), "--changed", str(tmp_path / "no" / "c.jsonl")],
        ["--report", str(tmp_path / "no" / "r.html")],
    ]
    for extra in calls:
        assert main(["summary", str(current), *extra]) == 2, extra
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == len(calls) and "Traceback" not in "\n".join(err)


# --- The report ---------------------------------------------------------------------------


class Figures(HTMLParser):
    """The figures of a report: data-figure elements' text, histogram bars, settings."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, list[str]] = {}
        self.attributes: dict[str, list[dict[str, str]]] = {}
        self.bars: list[dict[str, str]] = []
        self.settings: dict[str, str] = {}
        self._open: list[str | None] = []
        self.tags: set[str] = set()
        self.links: list[str] = []
        self.histogram = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.add(tag)
        if tag == "svg":
            self.histogram = values.get("data-histogram", "")
        values.setdefault("histogram", self.histogram)
        self.links += [v for k, v in values.items() if k in ("src", "href")]
        if tag == "rect" and "data-bin" in values:
            self.bars.append(values)
        figure = values.get("data-figure") or (
            f"setting:{values['data-setting']}" if "data-setting" in values else None
        )
        if figure:
            self.attributes.setdefault(figure, []).append(values)
        self._open.append(figure)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1]:
            name = self._open[-1]
            if name.startswith("setting:"):
                self.settings[name[8:]] = data
            else:
                self.figures.setdefault(name, []).append(data)

    def number(self, name: str) -> float:
        return float(self.figures[name][0].replace(",", "").replace(" ms", ""))


async def test_the_report_holds_the_figures_of_the_results_file(
    make_client: MakeClient, faces: Faces, sandbox: SandboxServer, tmp_path: Path
) -> None:
    """Every figure of report.html matches what the results file holds (counted here line
    by line): statuses, errors by kind, confidence bars, latency percentiles, transitions.
    It loads nothing from the network, runs no script, and shows no secret."""
    sandbox.scripted.add(ScriptedResponse(path="/v1/facematch", status=503, json={"x": 1}))
    manifest = every_status_manifest(faces)
    out = tmp_path / "results.jsonl"
    await BatchRunner(make_client(max_retries=0), concurrency=1, rate_limit=None).run_to_file(
        read_manifest(manifest), out
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    previous = tmp_path / "export.csv"
    previous.write_text("pair_id,match,confidence\nsame,false,40\ndifferent,true,80\n")
    state = job_state(out, manifest)
    settings = {
        "plan": "growth",
        "reserve": "25%",
        "shards": "3/8",
        "base URL": "https://user:pa55word@api.example/v1",
        "client secret": CLIENT_SECRET,
        "rate-limit store": "redis://:hunter2@redis:6379/0",
    }
    report = write_report(
        tmp_path / "report.html",
        state,
        compare_results(out, previous),
        settings=settings,
        sources={"results": str(out)},
    )
    text = report.read_text()
    for secret in (CLIENT_SECRET, "pa55word", "hunter2"):
        assert secret not in text
    parsed = Figures()
    parsed.feed(text)
    assert "script" not in parsed.tags and parsed.links == []
    assert "url(" not in text and "@import" not in text
    assert parsed.settings["plan"] == "growth" and parsed.settings["shards"] == "3/8"
    assert parsed.settings["base URL"] == "https://user:***@api.example/v1"
    assert "client secret" not in parsed.settings

    count = {s: sum(r["status"] == s for r in lines) for s in ("match", "no_match", "no_face")}
    assert parsed.number("pairs") == len(lines)
    assert parsed.number("manifest_pairs") == len(lines)
    assert parsed.number("decided") == sum(count.values())
    for status, n in count.items():
        assert parsed.number(status) == n
    errors = [r for r in lines if r["status"] == "error"]
    assert parsed.number("retryable") == sum(r["retryable"] for r in errors) == 1
    assert parsed.number("final_errors") == sum(not r["retryable"] for r in errors) == 4
    assert parsed.attributes["exit_code"][0]["data-value"] == "69"
    kinds = {
        a["data-code"]: int(figure.replace(",", ""))
        for a, figure in zip(
            parsed.attributes["error_kind"], parsed.figures["error_kind"], strict=True
        )
    }
    expected: dict[str, int] = {}
    for r in errors:
        code = r["sub_code"] or r["error_type"]
        expected[code] = expected.get(code, 0) + 1
    assert kinds == expected

    current_bars = [b for b in parsed.bars if b["histogram"] == "current"]
    by_status: dict[str, int] = {}
    for bar in current_bars:
        by_status[bar["data-status"]] = by_status.get(bar["data-status"], 0) + int(
            bar["data-count"]
        )
    assert by_status == {s: count[s] for s in ("match", "no_match")}
    for status in ("match", "no_match"):
        bins = {int(b["data-bin"]) for b in current_bars if b["data-status"] == status}
        confidences = [r["confidence"] for r in lines if r["status"] == status]
        assert bins == {min(19, int(c / 5)) for c in confidences}
    earlier = [b for b in parsed.bars if b["histogram"] == "previous"]
    assert sorted((b["data-status"], b["data-bin"]) for b in earlier) == [
        ("match", "16"),
        ("no_match", "8"),
    ]

    latencies = sorted(r["latency_ms"] for r in lines if r["attempts"])
    assert parsed.number("latency_count") == len(latencies)
    assert parsed.number("attempts") == sum(r["attempts"] for r in lines)
    exact_p50 = latencies[math.ceil(0.5 * len(latencies)) - 1]
    assert parsed.number("latency_p50") == pytest.approx(exact_p50, rel=0.06, abs=1)
    assert parsed.number("latency_max") == pytest.approx(max(latencies), abs=1)

    rows = parsed.attributes["transition"]
    assert len(rows) == len(parsed.figures["transition"]) >= 3
    assert parsed.number("changed") == 2 + 6  # two flips, six new pairs
    assert parsed.number("previous_pairs") == 2


def test_summary_report_writes_the_html_and_names_it(
    current: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`summary --report report.html --against ...`: one self-contained file with the
    transitions and both histograms."""
    previous = tmp_path / "export.csv"
    previous.write_text(EXPORT)
    report = tmp_path / "report.html"
    main(["summary", str(current), "--against", str(previous), "--report", str(report)])
    assert f"report: {report}" in capsys.readouterr().out
    text = report.read_text()
    assert 'data-histogram="current"' in text and 'data-histogram="previous"' in text
    assert "match -&gt; no_match" in text and "What changed" in text


def test_a_report_without_a_manifest_or_a_comparison_still_renders(tmp_path: Path) -> None:
    """Only results: the counts, no transitions table, empty sections said to be empty."""
    results = tmp_path / "r.jsonl"
    results.write_text('{"pair_id": "a", "status": "no_face", "attempts": 0}\n')
    text = write_report(tmp_path / "r.html", job_state(results)).read_text()
    assert "What changed" not in text and "no requests" in text
    parsed = Figures()
    parsed.feed(text)
    assert parsed.figures["missing"] == ["n/a"] and parsed.number("no_face") == 1
