"""report.html: written next to report.md, self-contained, and rendered by a real browser (headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main
from fanout_core.report_html import report_html

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed: make test installs Debian's chromium with apt-get, which could not run here",
)
HOSTILE = '</script><img src="http://127.0.0.1:9/x.png" onerror="document.title=1"><b>bold</b>'


def result_doc() -> dict[str, Any]:
    items = [
        {"id": "sure-right", "answer": "yes", "confidence": 1.0, "votes": {"yes": 5}, "tie": False, "status": "ok",
         "expected": "yes", "correct": True},
        {"id": "tied", "answer": "no", "confidence": 0.4, "votes": {"no": 2, "yes": 2, "maybe": 1}, "tie": True,
         "status": "ok", "expected": "yes", "correct": False},
        {"id": HOSTILE, "answer": HOSTILE, "confidence": 0.8, "votes": {"yes": 4, "no": 1}, "tie": False, "status": "ok",
         "expected": "yes", "correct": True},
        {"id": "low", "answer": "maybe", "confidence": 0.2, "votes": {"maybe": 1}, "tie": False, "status": "partial",
         "expected": "no", "correct": False,
         "errors": [{"slot": "v1", "status": "failed", "error": "ThrottlingException: still throttled after 8 attempts"}]},
        {"id": "also-sure", "answer": "no", "confidence": 0.6, "votes": {"no": 3, "yes": 2}, "tie": False, "status": "ok",
         "expected": "no", "correct": True},
    ]  # fmt: skip
    return {
        "job_id": "html-check",
        "pattern": "voting",
        "strategy": "majority",
        "status": "partial",
        "counts": {"items": 5, "tasks": 25, "ok": 24, "invalid": 0, "failed": 1},
        "items": items,
        "usage": {"model_calls": 31, "input_tokens": 1234, "output_tokens": 56, "estimated_cost_usd": 0.0123,
                  "by_model": {"bedrock:amazon.nova-lite-v1:0": {"model_calls": 31, "input_tokens": 1234, "output_tokens": 56}}},
        "evaluation": {"items_with_expected": 5, "accuracy": 0.6, "single_call_accuracy": 0.5, "ece": 0.21, "brier": 0.2},
    }  # fmt: skip


class _Dom(HTMLParser):
    """The rendered document, reduced to what the checks need: item rows, chart marks, images, the title."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.row_classes: list[str] = []
        self.bars: list[int] = []
        self.points = 0
        self.images = 0
        self.hidden: set[str] = set()
        self.title = ""
        self._stack: list[str] = []
        self._in_items = False
        self._cell: list[str] | None = None
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "items":
            self._in_items = True
        if self._in_items and tag == "tr" and "tbody" in self._stack:
            self.rows.append([])
            self.row_classes.append(a.get("class") or "")
        if self._in_items and tag == "td":
            self._cell = []
        if tag == "rect" and a.get("class") == "bar":
            self.bars.append(int(a.get("data-count") or 0))
        if tag == "circle" and a.get("class") == "point":
            self.points += 1
        if tag == "img":
            self.images += 1
        if "hidden" in a and a.get("id"):
            self.hidden.add(str(a["id"]))
        if tag == "title" and not self._stack.count("svg"):
            self._in_title = True
        self._stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self.rows:
            self.rows[-1].append("".join(self._cell))
            self._cell = None
        if tag == "table":
            self._in_items = False
        if tag == "title":
            self._in_title = False
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_title:
            self.title += data


def render(page: Path, fragment: str = "") -> tuple[_Dom, str]:
    """The DOM after the page's scripts ran, as headless Chromium dumps it."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        dumped = subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom",
                page.resolve().as_uri() + fragment,
            ],
            capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = _Dom()
    dom.feed(dumped.stdout)
    return dom, dumped.stdout


@pytest.fixture
def page(tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    path.write_text(report_html(result_doc()), encoding="utf-8")
    return path


def test_the_page_needs_nothing_from_the_network(page: Path) -> None:
    text = page.read_text()
    # no external script, style, font or image; and a policy that forbids any fetch the data could try
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text.split('id="fanout-data">')[0])
    assert "default-src 'none'" in text
    # an item cannot end the data block: every "<" in the data is escaped
    data = text.split('id="fanout-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and json.loads(data)["job_id"] == "html-check"


@needs_chromium
def test_chromium_renders_the_summary_charts_and_every_item_doubtful_first(page: Path) -> None:
    # When headless Chromium loads the page and runs its script
    dom, text = render(page)

    # Then the script ran and the title names the job
    assert 'data-rendered="yes"' in text
    assert dom.title == "fanout report: html-check"
    # every item is a row: tied and low-confidence first (lowest confidence first), then the rest in input order
    assert [r[1] for r in dom.rows] == ["low", "tied", "sure-right", HOSTILE, "also-sure"]
    assert dom.row_classes[:2] == ["doubt", "doubt"] and dom.row_classes[2:] == ["", "", ""]
    assert dom.rows[1][3:6] == ["0.40", "no: 2, yes: 2, maybe: 1", "yes"]
    assert dom.rows[0][7] == "no ✗"
    # the confidence histogram has one bar per tenth, counting the items
    assert len(dom.bars) == 10 and sum(dom.bars) == 5 and dom.bars[2] == 1 and dom.bars[9] == 1
    # the calibration chart is there (items carry expected), one point per occupied bin
    assert "calibration-section" not in dom.hidden and dom.points == 5
    # failures with their reasons, and usage and cost
    assert "ThrottlingException: still throttled after 8 attempts" in text
    assert "$0.0123" in text and "bedrock:amazon.nova-lite-v1:0" in text
    # the hostile item is shown as text: no image element was made from it, the title was not changed
    assert dom.images == 0
    assert HOSTILE in [r[1] for r in dom.rows]


@needs_chromium
def test_chromium_sorts_and_filters_the_table_by_script(page: Path) -> None:
    by_id, _ = render(page, "#sort=id&desc=1")
    ids = [r[1] for r in by_id.rows]
    assert ids == sorted(ids, reverse=True)
    by_confidence, _ = render(page, "#sort=confidence")
    assert [r[3] for r in by_confidence.rows] == ["0.20", "0.40", "0.60", "0.80", "1.00"]
    filtered, text = render(page, "#q=sure")
    assert [r[1] for r in filtered.rows] == ["sure-right", "also-sure"] and "2 of 5 items" in text
    doubtful, _ = render(page, "#doubtful=1")
    assert [r[1] for r in doubtful.rows] == ["low", "tied"]


@needs_chromium
def test_chromium_draws_a_screenshot_of_the_report(page: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1200,1400", f"--screenshot={shot}", page.resolve().as_uri(),
            ],
            capture_output=True, timeout=90, check=True,
        )  # fmt: skip
    body = shot.read_bytes()
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(body[16:20], "big") == 1200  # the PNG's width
    assert len(body) > 30_000  # a page with charts and a table, not a blank one


def test_a_run_writes_report_html_next_to_report_md_and_view_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(__file__).resolve().parents[2]
    code = main(
        ["run", str(root / "examples" / "ticket-triage.json"), "--out", str(tmp_path), "--quiet", "--model", "sim:latency_ms=1"]
    )
    assert code == 0
    target = tmp_path / "ticket-triage"
    page = (target / "report.html").read_text()
    data = json.loads(page.split('id="fanout-data">', 1)[1].split("</script>", 1)[0])
    result = json.loads((target / "result.json").read_text())
    assert [r["id"] for r in sorted(data["rows"], key=lambda r: r["n"])] == [i["id"] for i in result["items"]]
    capsys.readouterr()

    import webbrowser

    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or False)
    assert main(["view", str(target)]) == 0
    assert opened == [(target / "report.html").resolve().as_uri()]
    assert capsys.readouterr().out.strip() == f"report: {(target / 'report.html').resolve()}"
    assert main(["view", str(tmp_path / "nothing")]) == 1
    assert "no report.html there" in capsys.readouterr().err


@needs_chromium
def test_chromium_says_when_the_table_lists_only_the_most_doubtful_items(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fanout_core import report_html as page_module

    # Given a page whose table may list two rows, of a result with five items
    monkeypatch.setattr(page_module, "MAX_ROWS", 2)
    path = tmp_path / "report.html"
    path.write_text(report_html(result_doc()), encoding="utf-8")

    # When Chromium renders it
    dom, text = render(path)

    # Then the two most doubtful items are listed, and the page says the rest are in results.jsonl
    assert [r[1] for r in dom.rows] == ["low", "tied"]
    assert "rows-note" not in dom.hidden
    assert "The table lists the 2 most doubtful of 5 items" in text and "results.jsonl holds every item" in text
    # the figures still count every item
    assert sum(dom.bars) == 5


@needs_chromium
def test_chromium_shows_a_mean_items_n_spread_and_range_not_a_confidence(tmp_path: Path) -> None:
    # Given a mean job's result: numbers, no confidence
    from tests.unit.test_report_numbers import numeric_result

    path = tmp_path / "report.html"
    path.write_text(report_html(numeric_result("mean")), encoding="utf-8")

    # When Chromium renders it
    dom, text = render(path)

    # Then the column is n, spread and range, each row shows its own, and no confidence histogram is drawn
    assert 'data-rendered="yes"' in text
    assert "n, spread, range" in text
    cells = {row[1]: row[3] for row in dom.rows}
    assert cells["a"].startswith("n=5, stdev ") and cells["a"].endswith("range 2–8")
    assert cells["b"] == "n=5, stdev 0, range 5–5"
    assert "histogram-section" in dom.hidden
