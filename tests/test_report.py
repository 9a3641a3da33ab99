"""Tables, plots and the HTML report (asymbp.report, asymbp.report.plots, `asymbp table`/`report`).

The tables and figures come from a database filled by a real (tiny) sweep: Experiment A's SGD
and uSF+BN+BM columns on a tiny npz dataset with the `mlp` network, 2 epochs, multipliers 1
and 10 (mnist5k would be as real but takes seconds to load in every worker). The
figures that need other experiments (B, C2) use hand-made runs of the same shape.
"""

from __future__ import annotations

import base64
import io
import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from asymbp import paper, report
from asymbp.report import plots
from asymbp.cli import main
from asymbp.errors import AsymbpError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METHODS = ["SGD", "uSF+BN+BM"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small 4-class problem (Gaussian clusters in 16 dimensions): a run takes a second."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 1.5, (4, 16))

    def split(n):
        y = rng.integers(0, 4, n)
        return (means[y] + rng.normal(0, 1, (n, 16))).astype(np.float32), y.astype(np.int64)

    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    (xa, ya), (xb, yb) = split(400), split(200)
    np.savez(path, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    return f"npz:{path}"


@pytest.fixture(scope="module")
def db(tmp_path_factory, tiny):
    from asymbp.sweep import plan, sweep

    path = tmp_path_factory.mktemp("sweep") / "results.db"
    runs = plan("A", methods=METHODS, datasets=[tiny], lr_mults=[1, 10], seeds=[1],
                base={"epochs": 2, "model": "mlp"})
    counts = sweep(runs, path, workers=1, progress=False, log=False)
    assert counts["finished"] == 4, counts
    return path


def _runs(cells, experiment="A"):
    """Hand-made runs: cells = [(dataset, method, lr_mult, seed, best_test_error, status)]."""
    rows = []
    for i, (d, m, k, s, v, status) in enumerate(cells):
        rows.append({"run_key": f"r{i}", "experiment": experiment, "method": m, "dataset": d,
                     "lr_mult": float(k), "seed": s, "status": status,
                     "best_test_error": v, "val_error": math.nan,
                     "honest_test_error": math.nan, "config": {"epochs": 1}})
    return pd.DataFrame(rows)


def _check_png(data: bytes):
    from PIL import Image

    assert data[:8] == PNG_SIGNATURE
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.width > 50 and img.height > 50
    arr = np.asarray(img.convert("L"))
    assert arr.std() > 1, "a blank image"
    return img


# ---- tables -------------------------------------------------------------------------------

HAND = _runs([
    ("mnist5k", "SGD", 1, 1, 2.0, "done"), ("mnist5k", "SGD", 10, 1, 1.5, "done"),
    ("mnist5k", "SGD", 1, 2, 2.5, "done"),
    ("mnist5k", "BM", 1, 1, 6.0, "done"), ("mnist5k", "BM", 1, 2, 5.0, "done"),
    ("mnist5k", "uSF", 1, 1, math.nan, "diverged"),
    ("mnist5k", "NuSF", 1, 1, 1.2, "done"), ("mnist5k", "NuSF", 10, 1, math.nan, "pending"),
    ("cifar10", "SGD", 1, 1, 30.0, "done"), ("cifar10", "BN", 1, 1, 20.0, "done"),
])

EXPECTED_MD = """\
**Table 2, Experiment A: strict sign concordance. Error % (paper protocol: the best test error \
over all epochs and learning-rate multipliers, mean ± std over seeds).**

| dataset | SGD | BM | BN | uSF | NuSF |
|---|---:|---:|---:|---:|---:|
| mnist5k | 2.00 ± 0.71 | 5.50 ± 0.71 ▲ | — | diverged | 1.20* |
| cifar10 | 30.00 | — | 20.00 ▼ | — | — |

▲ ≥ 3 points worse than the row's SGD (the paper's yellow); ▼ ≥ 3 points better \
(the paper's blue); diverged: every run of the cell diverged; —: no finished run; \
*: some runs of the cell not finished yet.
"""


def test_markdown_table_exact():
    t = report.table(HAND, "A", methods=["SGD", "BM", "BN", "uSF", "NuSF"])
    assert report.render(t, "md") == EXPECTED_MD


def test_markdown_with_paper_maps_mnist5k_to_mnist():
    t = report.table(HAND, "A", paper=True, methods=["SGD", "uSF"], datasets=["mnist5k"])
    md = report.render(t, "md")
    assert "| dataset | SGD | paper | Δ | uSF | paper | Δ |" in md
    assert "| mnist5k | 2.00 ± 0.71 | 0.67 | +1.33 | diverged | 88.65 |  |" in md
    assert "compared with the paper's MNIST row" in md.splitlines()[0]


def test_highlight_rule_against_the_rows_sgd():
    runs = _runs([("cifar10", m, 1, 1, v, "done") for m, v in
                  [("SGD", 10.0), ("BM", 13.0), ("BN", 7.0), ("uSF", 12.99), ("NuSF", 7.01)]])
    hl = report.table(runs, "A").attrs["highlight"].loc["cifar10"]
    assert hl["BM"] == "worse" and hl["BN"] == "better"
    assert hl["uSF"] == hl["NuSF"] == hl["SGD"] == ""
    # Table 4 right: X@top is compared with SGD@top, X@bottom with SGD@bottom.
    c2 = _runs([("svhn", m, 1, 1, v, "done") for m, v in
                [("SGD@bottom", 10.0), ("SGD@top", 70.0), ("RndF@bottom", 80.0),
                 ("RndF@top", 71.0)]], experiment="C2")
    hl = report.table(c2, "C2").attrs["highlight"].loc["svhn"]
    assert hl["RndF@bottom"] == "worse" and hl["RndF@top"] == ""


def test_table_from_a_real_sweep(db, tiny):
    t = report.table(db, "A")
    assert list(t.columns) == paper.columns("A") and list(t.index) == [tiny]
    value = t.attrs["value"]
    for m in METHODS:
        assert 0 <= value.loc[tiny, m] <= 100
        assert t.loc[tiny, m] == f"{value.loc[tiny, m]:.2f}"
    assert t.loc[tiny, "BN"] == report.MISSING
    # The cell is the best test error over both multipliers' epochs (paper protocol).
    from asymbp import store

    runs = store.load(db)
    sgd = runs[runs["method"] == "SGD"]["best_test_error"].min()
    assert value.loc[tiny, "SGD"] == pytest.approx(sgd)
    epochs = store.load_epochs(db)
    assert sgd == pytest.approx(epochs[epochs["method"] == "SGD"]["test_error"].min())

    tp = report.table(db, "A", paper=True)  # no paper row for this dataset: "—"
    assert tp.attrs["published"].isna().all().all()
    assert tp.loc[tiny, ("SGD", "paper")] == report.MISSING
    csv = pd.read_csv(io.StringIO(report.render(tp, "csv")), index_col=0)
    assert csv.loc[tiny, "SGD"] == pytest.approx(sgd, abs=1e-4)
    html = report.render(tp, "html")
    assert html.count("<tr>") == 3 and 'colspan="3">uSF+BN+BM<' in html
    tex = report.render(tp, "latex")
    assert "\\begin{tabular}{l" + "r" * 33 + "}" in tex and "\\%" in tex


def test_honest_protocol_needs_a_validation_split(db):
    t = report.table(db, "A", protocol="honest")  # the sweep ran the paper protocol
    assert (t.iloc[0] == report.MISSING).all()


PDFLATEX = shutil.which("pdflatex")


def test_latex_is_ascii_and_escaped():
    tex = report.render(report.table(HAND, "A", paper=True), "latex")
    assert tex.isascii()
    assert "\\cellcolor{yellow!45}5.50 $\\pm$ 0.71" in tex and "\\cellcolor{cyan!25}20.00" in tex
    assert "Error \\%" in tex and "\\multicolumn{3}{c}{uSF+BN+BM}" in tex


@pytest.mark.skipif(PDFLATEX is None, reason="pdflatex is not installed "
                                             "(Debian: texlive-latex-recommended)")
def test_latex_compiles(tmp_path):
    t = report.table(HAND, "A", paper=True, methods=["SGD", "BM", "BN", "uSF", "NuSF"])
    (tmp_path / "t.tex").write_text(report.render(t, "latex"))
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\\usepackage[table]{xcolor}\\usepackage{amssymb}"
        "\\usepackage[landscape,margin=1cm]{geometry}"
        "\\begin{document}\\input{t}\\end{document}\n")
    out = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 1000


# ---- the command line ---------------------------------------------------------------------

def test_cli_table(db, capsys, tmp_path):
    assert main(["table", "--experiment", "A", "--db", str(db), "--paper"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("**Table 2") and "| npz:" in out
    f = tmp_path / "a.tex"
    assert main(["table", "--experiment", "a", "--db", str(db), "--format", "latex",
                 "--out", str(f)]) == 0
    assert "\\end{tabular}" in f.read_text()


@pytest.mark.parametrize("args, message", [
    (["--experiment", "C1"], "no runs of experiment C1"),
    (["--experiment", "A", "--format", "xml"], "unknown format 'xml'; valid: md, csv, html"),
    (["--experiment", "Z"], "unknown experiment 'Z'"),
    (["--experiment", "A", "--methods", "SGD,usf+bn"], "unknown method column"),
    (["--experiment", "A", "--protocol", "best"], "unknown protocol 'best'"),
])
def test_cli_table_bad_input(db, capsys, args, message):
    assert main(["table", "--db", str(db), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_missing_database(tmp_path, capsys):
    assert main(["table", "--experiment", "A", "--db", str(tmp_path / "no.db")]) == 2
    assert "no results database" in capsys.readouterr().err
    with pytest.raises(AsymbpError):
        report.table(pd.DataFrame(columns=["experiment"]), "A")


# ---- figures ------------------------------------------------------------------------------

B_RUNS = pd.concat([
    _runs([("mnist5k", m, 1, s, v + s, "done") for s in (1, 2) for m, v in
           [("SGD", 2.0), ("brSF-100+BN+BM", 9.0), ("brSF-50+BN+BM", 8.0),
            ("brSF-25+BN+BM", 3.0), ("brSF+BN+BM", 2.5)]], "B1"),
    _runs([("mnist5k", m, 1, 1, v, "done") for m, v in
           [("SGD", 2.0), ("frSF-100+BN+BM", 6.0), ("frSF-75+BN+BM", 5.0),
            ("frSF+BN+BM", 2.7)]], "B2"),
], ignore_index=True)
C2_RUNS = _runs([("mnist5k", m, 1, 1, v, "done") for m, v in
                 [("SGD@bottom", 1.0), ("SGD@top", 4.0), ("RndF@bottom", 80.0),
                  ("RndF@top", 4.2), ("uSF+BN+BM@bottom", 1.1), ("uSF+BN+BM@top", 4.1)]], "C2")


def _figures(db):
    from asymbp import store

    epochs, align = store.load_epochs(db), store.load_alignment(db)
    assert len(align) and set(align["method"]) == set(METHODS)
    tiny = epochs["dataset"].iloc[0]
    # A heat map needs a paper row: call the tiny dataset mnist5k (it stands in for MNIST).
    runs = store.load(db).assign(dataset="mnist5k")
    return {
        "curves": plots.learning_curves(epochs, tiny, "uSF+BN+BM"),
        "curves_grid": plots.learning_curves_grid(epochs, tiny),
        "alignment": plots.alignment_curves(align, align["run_key"].iloc[-1]),
        "alignment_grid": plots.alignment_grid(align, tiny, store.load(db)),
        "heatmap": plots.paper_heatmap(report.table(runs, "A", paper=True)),
        "flip": plots.flip_probability(B_RUNS, "mnist5k"),
        "c2": plots.c2_bars(C2_RUNS, "mnist5k"),
    }


def test_every_figure_is_a_valid_png_and_svg(db, tmp_path):
    import matplotlib.pyplot as plt

    for name, fig in _figures(db).items():
        assert fig is not None, name
        png, svg = plots.save(fig, tmp_path / name)
        _check_png(png.read_bytes())
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()
        plt.close(fig)


def test_the_alignment_figure_shows_the_run_behind_the_cell_under_each_protocol():
    """k = 10 has the better test error, k = 1 the better validation error: the paper and the
    honest protocol put different runs behind the cell, and the figure follows the table's."""
    import matplotlib.pyplot as plt

    from asymbp.report.cells import cell_run

    runs = _runs([("mnist5k", "uSF", 10, 1, 1.0, "done"), ("mnist5k", "uSF", 1, 1, 2.0, "done")])
    runs = runs.assign(val_error=[9.0, 4.0], honest_test_error=[2.0, 7.0])
    align = pd.DataFrame([{"run_key": k, "experiment": "A", "method": "uSF",
                           "dataset": "mnist5k", "epoch": ep, "layer": "fc.0", "scheme": "uSF",
                           "angle": base + ep, "grad_angle": base + 2 * ep}
                          for k, base in (("r0", 10.0), ("r1", 50.0)) for ep in (1, 2)])
    for protocol, run, k in (("paper", "r0", 10), ("honest", "r1", 1)):
        assert cell_run(runs, "mnist5k", "uSF", protocol) == run
        value = report.table(runs, "A", protocol=protocol).attrs["value"].loc["mnist5k", "uSF"]
        assert value == runs.set_index("run_key").loc[
            run, "best_test_error" if protocol == "paper" else "honest_test_error"]
        fig = plots.alignment_grid(align, "mnist5k", runs, protocol=protocol)
        vw = fig.axes[0]
        shown = align[align["run_key"] == run]
        assert list(vw.lines[0].get_ydata()) == list(shown["angle"])
        assert f"(k = {k})" in vw.get_ylabel()
        plt.close(fig)


def test_palette_is_okabe_ito_and_lines_differ():
    styles = [plots.style(i) for i in range(5)]  # the five multipliers
    assert all(s["color"] in plots.OKABE_ITO for s in styles)
    for key in ("color", "marker", "linestyle"):
        assert len({str(s[key]) for s in styles}) == 5


# ---- the report page ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(db, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    return out / "index.html"


def test_report_page_is_self_contained(page):
    text = page.read_text()
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert len(srcs) >= 2  # learning curves, alignment (no heat map: no paper row)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        _check_png(base64.b64decode(src.split(",", 1)[1]))
    assert text.count('<table class="asymbp-table">') == 1
    assert "Configs, versions and commits" in text and "&quot;model&quot;: &quot;mlp&quot;" in text
    assert "uSF+BN+BM" in text and "training error (dashed) per epoch" in text
    assert not re.search(r'(src|href)="(?!data:|#)', text), "a link outside the page"


def test_report_bad_input(db, tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "no.db"), "--out", str(tmp_path)]) == 2
    assert "no results database" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "file")]) == 2
    assert "needs a folder" in capsys.readouterr().err


def test_empty_database(tmp_path, capsys):
    from asymbp.store import Store

    empty = tmp_path / "empty.db"
    Store(empty).close()
    assert main(["table", "--experiment", "A", "--db", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no runs of experiment A" in err and "there: none" in err
    assert main(["report", "--db", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "the database has no runs" in capsys.readouterr().err


def test_user_grid_table():
    runs = _runs([("mnist1d", m, 1, 1, v, "done") for m, v in
                  [("SGD", 20.0), ("PFA+BN", 25.0), ("KP", 19.0)]], experiment="grid")
    t = report.table(runs, "grid")
    assert list(t.columns) == ["SGD", "PFA+BN", "KP"]
    assert t.loc["mnist1d", "PFA+BN"] == "25.00" and t.attrs["highlight"].loc["mnist1d",
                                                                              "PFA+BN"] == "worse"
    assert "no published" not in report.render(report.table(runs, "grid", paper=True), "md")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=5000"]
# Run after load: count tables and images, and images the browser could not decode.
CHECK = """<script>window.addEventListener("load", () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  document.body.setAttribute("data-check",
    `tables=${document.querySelectorAll("table.asymbp-table").length} ` +
    `images=${imgs.length} broken=${broken}`);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                             "(Debian: apt-get install -y chromium)")
def test_report_in_headless_chromium(page, tmp_path):
    from PIL import Image

    base = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([*base, "--window-size=1280,1600", f"--screenshot={shot}",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    img = _check_png(shot.read_bytes())
    assert img.size == (1280, 1600)
    # Not blank: many distinct colours (text, the coloured cells, the figures).
    assert len(Image.open(shot).convert("RGB").getcolors(1 << 20) or ()) > 50

    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    dom = subprocess.run([*base, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    n_img = page.read_text().count("<img ")
    assert f'data-check="tables=1 images={n_img} broken=0"' in dom
