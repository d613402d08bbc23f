"""The HTML report, built from a real small sweep, checked against its rows and in a browser.

The results come from two real sweeps of the command line on the test ladder (no timing is
written by hand): a few real strategies, then the planted strategies of planted_strategies.py,
which really raise, hang (timeout, then the larger size is skipped), exhaust memory (oom) and
return zeros (disagrees). Sweeps run in subprocesses for the reasons given in test_cli.py.
"""
from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from markupsafe import escape

from jacbench.bench import store
from jacbench.reports import summary as S
from jacbench.reports.build import build_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SECTIONS = ("1. Summary", "2. Per quantity", "3. Agreement", "4. Failures", "5. Seed claims",
            "6. Environment", "7. All results")
REAL = ["torch.single_jvp", "torch.sum_trick", "torch.full_functional", "torch.row_loop",
        "jax.single_jvp_jit", "torch.dense", "torch.jvp_vjp", "torch.jacfwd", "torch.jacrev",
        "torch.autograd_loop", "jax.jacrev_jit"]
PLANTED = ["torch.planted_raises", "torch.planted_hangs", "torch.planted_hog",
           "torch.planted_wrong"]


def _sweep(results: Path, args, planted: bool):
    code = ("import sys; " + ("import planted_strategies; " if planted else "")
            + "from jacbench.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    run = subprocess.run([sys.executable, "-c", code, "run", "--profile", "test", "--threads",
                          "1", "--results", str(results), "--quiet", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "results.jsonl"
    _sweep(path, ["--quantity", "jac_diag,ggn_vp,jacobian", "--problem",
                  "seed002_netx,mlp_square,seed000_mlp,seed004_linear_tanh",
                  "--strategy", ",".join(REAL)], planted=False)
    # 3 s, not less: on a loaded machine (CI, the other pytest-xdist worker) the hog was seen
    # still short of the 0.2 GB cap when a 1 s limit ended it as a timeout instead of an OOM.
    _sweep(path, ["--quantity", "jac_diag", "--problem", "seed002_netx", "--strategy",
                  ",".join(PLANTED), "--timeout", "3", "--mem-cap", "0.2"], planted=True)
    return path


@pytest.fixture(scope="module")
def rows(results) -> pd.DataFrame:
    df = store.load(results)
    # The data set must exercise every status the page has to show.
    assert {"ok", "disagrees", "error", "timeout", "oom", "skipped",
            "not_applicable"} <= set(df["status"]), df["status"].value_counts()
    return S.normalize(df)


@pytest.fixture(scope="module")
def page(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    written = build_report(results, out)
    assert written == out and out.is_file()
    return out


def _section(html: str, start: str, end: str | None) -> str:
    a = html.index(f'<section id="{start}">')
    return html[a:html.index(f'<section id="{end}">')] if end else html[a:]


# ------------------------------------------------------------------------------ content
def test_page_is_self_contained_with_every_section(page, rows):
    html = page.read_text()
    for heading in SECTIONS:
        assert f">{heading}</h2>" in html, heading
    # Offline: no external script, style, image or font; figures are inline PNGs.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "<link" not in html and "@import" not in html
    # Per quantity: time against size and the ranking always; memory against size where a
    # steady-state peak was measured (tiny test problems may add nothing to the high-water mark).
    measured = rows[rows["status"] != "not_applicable"].groupby("quantity")["peak_mem_bytes"]
    figures = sum(2 + bool((peaks > 0).any()) for _, peaks in measured)
    assert html.count('src="data:image/png;base64,') >= figures
    assert f"{len(rows)} results" in html


def test_summary_agrees_with_the_raw_rows(rows):
    table = S.summary_table(rows)
    good = rows[rows["status"].eq("ok") & rows["exact"]]
    for r in table.itertuples():
        mine = good[(good["quantity"] == r.quantity) & (good["problem"] == r.problem)]
        if mine.empty:
            assert not isinstance(r.best, str)
            continue
        fastest = mine.loc[mine["median_s"].idxmin()]
        assert (r.best, r.best_s) == (fastest["strategy"], fastest["median_s"])
        assert r.speedup_slowest == pytest.approx(mine["median_s"].max() / fastest["median_s"])
        base = rows[(rows["quantity"] == r.quantity) & (rows["problem"] == r.problem)
                    & (rows["strategy"] == r.baseline)]
        if len(base) and base["status"].iloc[0] == "ok":
            assert r.speedup_baseline == pytest.approx(base["median_s"].iloc[0] / r.best_s)
    # The baseline rule on this run's names: the autograd loop for jacobian, the dense
    # product for ggn_vp, and seed 002's full functional Jacobian for jac_diag.
    by_q = table.groupby("quantity")["baseline"].first()
    assert by_q["jacobian"] == "torch.autograd_loop"
    assert by_q["ggn_vp"] == "torch.dense"
    assert by_q["jac_diag"] == "torch.full_functional"


def test_recommendations_are_derived_from_the_summary(rows, page):
    table = S.summary_table(rows)
    html = page.read_text()
    for rec in S.recommendations(table):
        q = table[table["quantity"] == rec["quantity"]]
        complete = q[q["not_run"] == ""]
        if len(complete) < len(q):  # a framework did not run at some sizes: those are left out
            assert f"Counted on the {len(complete)} sizes where every framework ran" in rec["text"]
            q = complete
        wins = q["best"].value_counts()
        assert rec["strategy"] in wins.index[wins == wins.max()]
        assert f"on {wins[rec['strategy']]} of {len(q)} problem sizes" in rec["text"]
        at = q[q["best"] == rec["strategy"]].sort_values(["scale", "best_s"]).iloc[-1]
        assert f"At {at['problem']} it takes {S.fmt_timing(at['best_s'], at['best_runs'])}" \
            in rec["text"]
        assert str(escape(rec["text"])) in html


def test_failures_are_listed_and_marked(rows, page):
    html = page.read_text()
    failures = _section(html, "failures", "seed-claims")
    failed = rows[rows["status"].isin(S.FAILED + ("disagrees",))]
    assert len(failed) >= 7
    body = failures.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr") == len(failed)
    for r in failed.itertuples():
        assert r.strategy in failures
    assert "first call: ValueError: planted failure" in failures
    assert "not attempted: timeout at the smaller size" in failures
    assert 'class="row-failed"' in failures and 'class="row-disagrees"' in failures
    # In the agreement grid a wrong result is flagged, a failure greyed with its status.
    agreement = _section(html, "agreement", "failures")
    assert agreement.count("ag ag-disagrees") == (rows["status"] == "disagrees").sum()
    assert "ag ag-timeout" in agreement and "ag ag-oom" in agreement
    # Not-applicable cases are listed with their reason.
    na = rows[rows["status"] == "not_applicable"]
    assert na["message"].iloc[0] in failures


def test_seed_claims_follow_the_rows(rows):
    claims = {c.seed: c for c in S.seed_claims(rows, ROOT / "no-such-design.md")}
    assert "001" not in claims and "003" not in claims  # their workloads did not run
    assert all(c.question for c in claims.values())  # each names its public question
    for seed in ("000", "002", "004"):
        assert claims[seed].verdict != S.UNMEASURED, claims[seed]
        assert claims[seed].evidence and claims[seed].rule
    # Seed 002: the ratio quoted is the fastest cheap route over the full Jacobian, torch,
    # at the largest batch.
    jd = rows[(rows["quantity"] == "jac_diag") & (rows["family"] == "seed002_netx")
              & rows["status"].eq("ok") & (rows["framework"] == "torch")]
    top = jd[jd["scale"] == jd["scale"].max()]
    cheap = top[top["strategy"].isin(["torch.single_jvp", "torch.sum_trick"])]["median_s"].min()
    full = top[top["strategy"] == "torch.full_functional"]["median_s"].iloc[0]
    ratio = full / cheap
    text = next(e for e in claims["002"].evidence if e.startswith("torch"))
    shown = S.fmt_ratio(ratio) if ratio >= 1 else S.fmt_ratio(1 / ratio)
    assert shown in text
    # Only torch has both routes in this run (no JAX full Jacobian), so torch decides.
    expected = S.CONFIRMED if ratio >= 100 else S.PARTLY if ratio > 1 else S.REFUTED
    assert claims["002"].verdict == expected


def test_claim_texts_come_from_design_md(tmp_path, rows):
    design = tmp_path / "design.md"
    design.write_text("| seed file | workload | claim to reproduce in the report |\n|---|---|---|\n"
                      "| 002_abc.txt | net_x | a single jvp wins by a mile |\n")
    claims = {c.seed: c for c in S.seed_claims(rows, design)}
    assert claims["002"].claim == "a single jvp wins by a mile"
    assert claims["002"].file == "002_abc.txt"
    assert claims["000"].claim == S.SEEDS[0][3]  # not in this design.md: the built-in text


def test_a_torn_last_line_is_skipped(results, tmp_path):
    torn = tmp_path / "torn.jsonl"
    data = results.read_bytes()
    torn.write_bytes(data + data.splitlines(keepends=True)[0][:57])
    out = tmp_path / "r.html"
    with pytest.warns(UserWarning, match="torn"):
        build_report(torn, out)
    assert f"{len(store.load(results))} results" in out.read_text()


def test_a_dataframe_builds_the_same_tables(results, tmp_path):
    df = store.load(results)
    out = build_report(df, tmp_path / "df.html")
    html = out.read_text()
    assert "from <code>DataFrame</code>" in html
    assert f"{len(df)} results" in html


def test_machine_kinds_are_ranked_apart_and_hosts_counted(results, page, tmp_path):
    """One kind of machine (one host here): one summary, saying so. A sweep over a mixed
    cluster: one summary per kind, each ranked on its own rows, hosts of a kind counted."""
    one = page.read_text()
    assert re.search(r"results from 1 host \(\S+\), one kind of machine: ", one)
    assert 'id="machine-1"' not in one and one.count('id="summary-table') == 1
    df = store.load(results)
    big = df["quantity"] == "jacobian"  # as if measured on three hosts of a larger kind
    df.loc[big, "cpu"] = "Big CPU (64 cpus)"
    df.loc[big, "hostname"] = [f"node{i % 3}" for i in range(int(big.sum()))]
    html = build_report(df, tmp_path / "mixed.html").read_text()
    assert "Measured on\n2 kinds of machine, ranked apart" in html
    assert re.search(r"Big CPU \(64 cpus\):\s+3 hosts \(node0, node1, node2\)", html)
    assert 'id="machine-2"' in html and 'id="summary-table-2"' in html
    tables = {m["kind"]: S.summary_table(m["rows"]) for m in S.machines(S.normalize(df))}
    assert set(tables["Big CPU (64 cpus)"]["quantity"]) == {"jacobian"}
    assert "jacobian" not in set(tables[next(k for k in tables if k != "Big CPU (64 cpus)")]
                                 ["quantity"])


def test_figures_drawn_in_two_processes_are_the_same_page(results, page, tmp_path):
    out = build_report(results, tmp_path / "two.html", workers=2)
    date = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert date.sub("", out.read_text()) == date.sub("", page.read_text())


# ------------------------------------------------------------------------------ browser
def _chromium(tmp_path: Path, *args) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _console(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]


needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="headless Chromium is not installed (Debian package "
                                  "`chromium`: apt-get install -y chromium)")


@needs_chromium
def test_console_check_catches_a_script_error(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined();</script></body></html>")
    run = _chromium(tmp_path, "--dump-dom", bad.as_uri())
    assert any("Uncaught ReferenceError" in ln for ln in _console(run.stderr)), run.stderr[-2000:]


@needs_chromium
def test_page_renders_in_chromium_without_console_errors(page, tmp_path):
    run = _chromium(tmp_path, "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console(run.stderr) == []
    dom = run.stdout
    for heading in SECTIONS:
        assert f">{heading}</h2>" in dom, heading
    n_tables = page.read_text().count('class="sortable')
    assert f'data-tables-ready="{n_tables}"' in dom, "the table script did not run to its end"

    shot = tmp_path / "report.png"
    run = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1400,4000",
                    "--hide-scrollbars", page.as_uri())
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert _console(run.stderr) == []
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1400, 4000)
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one


@needs_chromium
def test_sorting_and_filtering_work_in_the_browser(page, rows, tmp_path):
    # The page's own script, driven by a probe appended to a copy: click the Median header of
    # the all-results table twice, then filter, and write what happened into the DOM.
    probe = """<script>
    (function () {
      var t = document.getElementById("all-table");
      var th = t.querySelectorAll("thead th")[7];
      function col() { return Array.prototype.map.call(t.tBodies[0].rows, function (r) {
        var s = r.cells[7].getAttribute("data-sort"); return s === null ? null : +s; }); }
      th.click();
      var up = col().filter(function (v) { return v !== null; });
      th.click();
      var down = col().filter(function (v) { return v !== null; });
      var ok = up.every(function (v, i) { return i === 0 || up[i - 1] <= v; }) &&
               down.every(function (v, i) { return i === 0 || down[i - 1] >= v; });
      var f = document.querySelector('input[data-table="all-table"]');
      f.value = "planted_raises error";
      f.dispatchEvent(new Event("input"));
      var shown = Array.prototype.filter.call(t.tBodies[0].rows, function (r) {
        return r.style.display !== "none"; }).length;
      document.body.setAttribute("data-probe", (ok ? "sorted" : "unsorted") + ":" + up.length
                                 + ":" + shown);
    })();
    </script></body>"""
    copy = tmp_path / "probe.html"
    copy.write_text(page.read_text().replace("</body>", probe))
    run = _chromium(tmp_path, "--dump-dom", copy.as_uri())
    assert _console(run.stderr) == []
    timed = int(rows["median_s"].notna().sum())
    raised = int((rows["strategy"] == "torch.planted_raises").sum())
    assert f'data-probe="sorted:{timed}:{raised}"' in run.stdout
