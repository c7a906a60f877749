"""Smoke test of the benchmark code (benchmarks/): every row builder runs on tiny shapes and the
plain references agree with the project's implementations. No timings are asserted."""
from __future__ import annotations

import pytest

from benchmarks import layers
from benchmarks.__main__ import main


def _check(rows, methods):
    assert {r["method"] for r in rows} == methods
    for r in rows:
        assert r["same_mask"], r
        assert r["max_rel_diff"] < 1e-4, r
        assert r["reference_s"] > 0 and r["ours_s"] > 0


def test_method_and_iobs_rows_match_references():
    _check(layers.method_rows([(16, 32)], 256, 1), {"magnitude", "wanda", "sparsegpt"})
    _check(layers.iobs_rows([(16, 32)], 256, 1), {"iobs-projection"})


def test_obc_reference_matches_exactobs():
    _check(layers.obc_rows([(6, 12)], 1), {"obc"})


def test_woodfisher_reference_matches_woodbury():
    _check(layers.woodfisher_rows([(8, 32)], 1, num_grads=4, block=16), {"woodfisher"})


def test_stage_rows_report_every_stage():
    (row,) = layers.stage_rows([(16, 32)], 256, 1)
    assert row["shape"] == "16x32" and row["sweep_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["run", "--only", "methods,nope"], "unknown part"),
    (["run", "--e2e", "opt-9b"], "unknown e2e model"),
    (["run", "--calib", "4by128"], "NxSEQLEN"),
    (["run", "--shapes", "12x"], "OUTxIN"),
])
def test_cli_rejects_bad_options_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
