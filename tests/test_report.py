"""`featuremart report`: the static site opened in a real headless Chromium (the Debian package), its charts
measured as rendered and its figures checked against `featuremart stats --json` and `featuremart status --json`;
hostile user text escaped; an unwritable output directory refused with nothing written."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import subprocess
import time
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest
from rich.console import Console

from featuremart.cli import main
from featuremart.monitoring.report import INDEX, view_page
from tests.conftest import skip_or_fail_in_ci
from tests.test_stats import sync_with_planted_drift, synced  # noqa: F401  (synced: a fixture)

CHROMIUM = "chromium"
#: Appended to a copy of a page for the test only (the site itself has no JavaScript): writes each chart
#: element's rendered size into the DOM, so `--dump-dom` returns what Chromium laid out.
MEASURE = """<script>
for (const el of document.querySelectorAll("svg.chart rect.bar, svg.chart circle")) {
  const box = el.getBoundingClientRect();
  el.setAttribute("data-rendered", box.width.toFixed(3) + " " + box.height.toFixed(3) + " " + box.top.toFixed(3));
}
</script>"""
HOSTILE = '<img src=x onerror="alert(1)"></svg><script>alert(2)</script> & "quotes"'


class Dom(HTMLParser):
    """The elements of a dumped DOM as (tag, attributes, text inside), and every page-level text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        text: list[str] = []
        self.elements.append((tag, {k: v or "" for k, v in attrs}, text))
        if tag not in ("img", "br", "meta", "line", "rect", "circle", "polyline", "input"):
            self._open.append(text)

    def handle_endtag(self, tag):
        if self._open and tag not in ("img", "br", "meta", "line", "rect", "circle", "polyline", "input"):
            self._open.pop()

    def handle_data(self, data):
        for text in self._open:
            text.append(data)

    def find(self, tag: str, **attrs: str) -> list[tuple[dict[str, str], str]]:
        return [(a, "".join(t)) for name, a, t in self.elements
                if name == tag and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


def _chromium_dom(page: Path, tmp_path: Path) -> Dom:
    """The page as Chromium rendered it (headless, no network needed), chart sizes measured."""
    if shutil.which(CHROMIUM) is None:
        skip_or_fail_in_ci("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    measured = page.with_name(f"measured-{page.name}")
    measured.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,2000",
                           "--dump-dom", measured.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "</html>" in proc.stdout, proc.stderr[-2000:]
    return Dom(proc.stdout)


def _cli(project: Path, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main([*args, "--project-dir", str(project), "--profiles-dir", str(project)],
                console=Console(file=out, width=300))
    return code, out.getvalue()


@pytest.fixture
def published(synced):
    """The reference project synced twice, spend_7d shifted in between (drift), a view's description hostile."""
    project = synced
    sync_with_planted_drift(project, 3, 500)
    manifest = project / "target" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["nodes"]["model.featuremart.merchant_risk"]["description"] = HOSTILE
    manifest.write_text(json.dumps(doc))
    return project


@pytest.mark.integration
def test_report_in_chromium_matches_stats_and_status(published, tmp_path):
    zone = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"  # every time shown is UTC whatever the process's zone
    time.tzset()
    try:
        code, said = _cli(published, "report", "--output", str(tmp_path / "site"))
        code_status, status_out = _cli(published, "status", "--json")
    finally:
        os.environ.pop("TZ") if zone is None else os.environ.__setitem__("TZ", zone)
        time.tzset()
    assert code == 0 and "wrote 6 page(s)" in said, said
    status = {r["name"]: r for r in json.loads(status_out)["rows"]}
    site = tmp_path / "site"
    for page in site.glob("*.html"):  # self-contained: nothing is fetched from anywhere
        refs = Dom(page.read_text())
        links = [a.get(k) for _tag, a, _t in refs.elements for k in ("src", "href") if a.get(k)]
        assert all(not (link.startswith(("http:", "https:", "//")) or link.endswith((".js", ".css")))
                   for link in links), (page.name, links)

    view = "customer_spend"
    dom = _chromium_dom(site / view_page(view), tmp_path)
    code, out = _cli(published, "stats", view, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["features"]
    for name, feature in stats["features"].items():
        latest, history = feature["latest"], feature["history"]
        # the histogram: one bar per bin with the bin's count, drawn to scale by Chromium
        bars = [a for a, _ in dom.find("rect", **{"class": "bar"}) if _in_chart(dom, a, "histogram", name)]
        assert [int(a["data-count"]) for a in bars] == latest["histogram"]["counts"], name
        heights = [float(a["data-rendered"].split()[1]) for a in bars]
        widths = {round(float(a["data-rendered"].split()[0]), 1) for a in bars}
        peak = max(latest["histogram"]["counts"])
        assert max(heights) > 40 and len(widths) == 1 and min(widths) > 5, (heights, widths)  # laid out, visible
        assert all(math.isclose(h / max(heights), n / peak, abs_tol=0.02)
                   for h, n in zip(heights, latest["histogram"]["counts"])), (name, heights)
        # the drift chart: a point per run with a PSI, oldest first, at the values stats prints
        psi = [a for a, _ in dom.find("circle", data_series="psi") if _in_chart(dom, a, "drift", name)]
        assert [float(a["data-value"]) for a in psi] == [h["psi"] for h in reversed(history) if h["psi"] is not None]
        assert all(float(a["data-rendered"].split()[1]) > 0 for a in psi)
        # the figures: the exact value, and the text people read
        for stat in ("count", "mean", "stddev", "min", "max"):
            [(cell, text)] = [(a, t) for a, t in dom.find("td", data_stat=stat) if _in_card(dom, a, name)]
            assert float(cell["data-value"]) == latest[stat] and text == _shown(latest[stat]), (name, stat, text)
        [(cell, _)] = [(a, t) for a, t in dom.find("td", data_stat="p50") if _in_card(dom, a, name)]
        assert float(cell["data-value"]) == latest["quantiles"]["p50"]
    levels = {n: f["history"][0]["level"] for n, f in stats["features"].items()}
    assert levels["spend_7d"] == "error" and dom.find("svg", **{"class": "chart drift", "data-feature": "spend_7d"})
    # the freshness row is status's: each stage's level, the drift detail naming the feature
    row = status[view]
    for stage in ("source", "warehouse", "online", "drift"):
        [(cell, text)] = dom.find("td", data_stage=stage)
        assert cell["data-status"] == row[stage]["status"], stage
    assert "spend_7d" in dict((a["data-stage"], t) for a, t in dom.find("td") if "data-stage" in a)["drift"]
    assert code_status == 4 and row["drift"]["status"] == "error"
    published_at = datetime.fromisoformat(row["online"]["last_publish"]).strftime("%Y-%m-%d %H:%M:%S UTC")
    times = _times(dom)
    assert times["last publish"] == published_at and times["entities published"] == str(row["online"]["entities"])

    index = _chromium_dom(site / INDEX, tmp_path)
    shown_views = {a["data-view"] for a, _ in index.find("div") if "data-view" in a}
    assert shown_views == {"customer_spend", "merchant_risk", "customer_profile", "customer_embedding",
                           "customer_merchant_pair"}
    services = {a["data-service"]: t for a, t in index.find("div") if "data-service" in a}
    assert set(services) == {"fraud_model", "recommender"}
    [(_, spend_card)] = [(a, t) for a, t in index.find("div") if a.get("data-view") == "customer_spend"]
    assert "risk-data@example.com" in spend_card and "gold" in spend_card and "sources raw.transactions" in spend_card
    # hostile user text is shown as text: no element came out of it
    [(_, risk_card)] = [(a, t) for a, t in index.find("div") if a.get("data-view") == "merchant_risk"]
    assert HOSTILE in risk_card
    assert not index.find("img") and len(index.find("script")) == 1  # only the test's own measuring script


def _in_chart(dom: Dom, attrs: dict, chart: str, feature: str) -> bool:
    """Whether an element (by identity of its attribute dict) sits in `feature`'s chart of that kind."""
    inside = None
    for tag, a, _ in dom.elements:
        if tag == "svg":
            inside = (chart in a.get("class", "").split() and a.get("data-feature") == feature)
        if a is attrs:
            return bool(inside)
    return False


def _in_card(dom: Dom, attrs: dict, feature: str) -> bool:
    card = None
    for tag, a, _ in dom.elements:
        if tag == "div" and "feature" in a.get("class", "").split():
            card = a.get("data-feature")
        if a is attrs:
            return card == feature
    return False


def _times(dom: Dom) -> dict[str, str]:
    """The view page's table of times: label -> text."""
    cells = [(tag, "".join(t)) for tag, a, t in dom.elements if tag in ("th", "td") and _in_times(dom, a)]
    return {label: text for (_, label), (_, text) in zip(cells[::2], cells[1::2])}


def _in_times(dom: Dom, attrs: dict) -> bool:
    inside = False
    for tag, a, _ in dom.elements:
        if tag == "table":
            inside = a.get("class") == "times"
        if a is attrs:
            return inside
    return False


def _shown(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@pytest.mark.integration
def test_unwritable_output_refused_and_a_never_synced_project_said_so(project, tmp_path, redis_url, monkeypatch):
    """An --output that cannot be written: one line, exit 1, nothing written. A project never synced: the site is
    written, each view's page and the command's output saying it has no statistics yet and why."""
    monkeypatch.setenv("FEATUREMART_REDIS_URL", redis_url)
    (tmp_path / "out").mkdir()
    blocker = tmp_path / "out" / "a-file"
    blocker.write_text("not a directory")
    code, out = _cli(project, "report", "--output", str(blocker))
    assert code == 1 and f"--output {blocker}: it is a file, not a directory" in out and len(out.splitlines()) == 1
    code, out = _cli(project, "report", "--output", str(blocker / "site"))
    assert code == 1 and "cannot write there" in out and "Traceback" not in out, out
    assert blocker.read_text() == "not a directory" and list(blocker.parent.iterdir()) == [blocker]
    code, out = _cli(project, "report", "--output", str(tmp_path / "site"))
    assert code == 0 and "wrote 6 page(s)" in out, out
    assert "customer_spend: shown without statistics: no statistics recorded for view customer_spend yet" in out
    page = (tmp_path / "site" / view_page("customer_spend")).read_text()
    assert "no statistics recorded for view customer_spend yet" in page and "<svg" not in page
    assert 'data-stage="online" data-status="n/a"' in page  # never published: n/a, as status says
