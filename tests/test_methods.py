"""Method strings (DESIGN §4): every column of the paper's tables parses to the right spec."""

import csv
from pathlib import Path

import pytest

from asymbp import paper
from asymbp.errors import AsymbpError
from asymbp.feedback import scheme_names
from asymbp.methods import MethodSpec, describe, parse_method

EXPERIMENTS = ["A", "B1", "B2", "C1", "C2", "BM"]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "paper"


def _all_columns():
    cols = {c for e in EXPERIMENTS for c in paper.columns(e)}
    if SHARED.is_dir():  # the published CSVs themselves, where this checkout has them
        # Liao 2016's tables (table*.csv); BioTorch's CSVs beside them name BioTorch's methods
        # (FA, DFA, ...) and lead with model/optimizer columns: they are not Liao's grammar.
        for f in SHARED.glob("table*.csv"):
            with f.open() as fh:
                cols |= set(next(csv.reader(fh))[1:])
    return sorted(cols)


def spec(scheme="BP", p=None, bn=False, affine=False, update="SGD", wn=False, freeze="none"):
    return MethodSpec(scheme=scheme, p=p, bn=bn, bn_affine=affine, update=update,
                      weight_norm=wn, freeze=freeze)


EXPECTED = {
    "SGD": spec(),
    "BM": spec(update="BM1"),
    "BM1": spec(update="BM1"),
    "BM3": spec(update="BM3"),
    "BN": spec(bn=True, affine=True),  # the paper's BN (symmetric BP): learnable scale/shift
    "BN+BM": spec(bn=True, affine=True, update="BM1"),
    "uSF": spec("uSF"),
    "NuSF": spec("NuSF"),
    "uSF+BM": spec("uSF", update="BM1"),
    "uSF+BN": spec("uSF", bn=True),  # asymmetric: BN without scale and shift
    "uSF+BN+BM": spec("uSF", bn=True, update="BM1"),
    "uSF+BN+BM3": spec("uSF", bn=True, update="BM3"),
    "brSF+BN+BM": spec("brSF", bn=True, update="BM1"),
    "brSF-25+BN+BM": spec("brSF", p=25.0, bn=True, update="BM1"),
    "frSF-100+BN+BM": spec("frSF", p=100.0, bn=True, update="BM1"),
    "frSF+BN+BM": spec("frSF", bn=True, update="BM1"),
    "RndF": spec("RndF"),
    "RndF+BN": spec("RndF", bn=True),
    "RndF+BM": spec("RndF", update="BM1"),
    "SGD@bottom": spec(freeze="bottom"),
    "RndF+BN+BM@top": spec("RndF", bn=True, update="BM1", freeze="top"),
    "uSF+BN+BM@bottom": spec("uSF", bn=True, update="BM1", freeze="bottom"),
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_paper_column_parses(experiment):
    cols = paper.columns(experiment)
    assert cols, experiment
    for col in cols:
        s = parse_method(col)
        assert isinstance(s, MethodSpec)
        # the canonical name parses back to the same spec
        assert parse_method(s.name) == s, col
        # BN's scale and shift only with symmetric BP
        assert s.bn_affine == (s.bn and s.scheme == "BP"), col


def test_shared_csv_headers_parse():
    cols = _all_columns()
    assert "uSF+BN+BM3" in cols and "RndF+BN+BM@top" in cols
    for col in cols:
        parse_method(col)


@pytest.mark.parametrize("text", sorted(EXPECTED))
def test_expected_specs(text):
    assert parse_method(text) == EXPECTED[text]


def test_paper_columns_are_covered_by_the_table():
    # Representative ones from each table are in EXPECTED; the rest follow the same rules.
    assert {"SGD", "BM", "BN", "BN+BM", "uSF+BN", "brSF-25+BN+BM", "frSF-100+BN+BM", "RndF+BM",
            "uSF+BN+BM3", "SGD@bottom", "RndF+BN+BM@top"} <= set(EXPECTED)
    assert set(EXPECTED) - {"BM1", "BM3"} <= set(_all_columns()) | {"BM3"}


@pytest.mark.parametrize("text,expected", [
    ("usf+bn+bm", "uSF+BN+BM"),
    ("USF+BN+BM", "uSF+BN+BM"),
    ("BRSF-25+bn+Bm", "brSF-25+BN+BM"),
    ("rndf+bn+bm@TOP", "RndF+BN+BM@top"),
    ("sgd", "SGD"),
    (" uSF + BN ", "uSF+BN"),
    ("BP+BN", "BN"),
    ("BP", "SGD"),
    ("brSF-0+BN+BM", "brSF+BN+BM"),
    ("frSF-12.5+BN", "frSF-12.5+BN"),
    ("sSF+WN", "sSF+WN"),
    ("uSF+BM1", "uSF+BM"),
])
def test_case_insensitive_and_canonical(text, expected):
    s = parse_method(text)
    assert s.name == expected
    assert parse_method(s.name) == s


def test_scheme_names_and_p():
    s = parse_method("brSF-25+BN+BM")
    assert s.scheme_name == "brSF-25" and s.scheme_options == {"p": 25.0}
    assert parse_method("uSF").scheme_name == "uSF"
    assert parse_method("uSF").scheme_options == {}


def test_spec_is_frozen():
    s = parse_method("uSF+BN+BM")
    with pytest.raises(Exception):
        s.bn = False
    assert s.replace(bn=False).name == "uSF+BM"


@pytest.mark.parametrize("text,mentions", [
    ("XYZ+BN", ["uSF", "RndF", "brSF-p"]),  # unknown scheme lists the schemes
    ("uSF+BX", ["BN", "BM", "WN"]),  # unknown part lists the parts
    ("uSF+BN+BM4", ["BM2", "BM3"]),
    ("uSF@middle", ["@bottom", "@top"]),
    ("uSF++BN", ["BN"]),
    ("", ["BN"]),
    ("BM+BM2", ["BM3"]),
    ("BN+BN", ["BN"]),
    ("BN+uSF", ["uSF"]),  # the scheme comes first
    ("brSF-150+BN", ["0-100"]),
    ("uSF+WN+WN", ["WN"]),
])
def test_unknown_parts_give_one_line_errors(text, mentions):
    with pytest.raises(AsymbpError) as info:
        parse_method(text)
    msg = str(info.value)
    assert "\n" not in msg
    for m in mentions:
        assert m in msg, (text, msg)


def test_scheme_options():
    assert parse_method("RndF", sigma=0.1).scheme_options == {"sigma": 0.1}
    with pytest.raises(AsymbpError, match="sigma"):
        parse_method("uSF", sigma=0.1)


def test_describe_lists_every_scheme_and_update():
    text = describe()
    for name in scheme_names():
        assert name in text
    for part in ("BN", "BM1", "BM2", "BM3", "WN", "@bottom", "@top"):
        assert part in text


def test_methods_command(capsys):
    from asymbp.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "uSF" in out and "BM3" in out
    assert main(["methods", "brsf-25+bn+bm"]) == 0
    out = capsys.readouterr().out
    assert "brSF-25+BN+BM" in out and "bn_affine=False" in out
    assert main(["methods", "uSF+XX"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "XX" in err
