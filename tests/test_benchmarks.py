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


def test_stage_breakdown_accounts_for_the_whole_prune():
    """Every stage of one small whole-model prune is timed and the parts add up to the total."""
    from benchmarks import stages

    row = stages.run("zoo:tiny-llama", "sparsegpt", "0.5", 4, 32, 4, eval_windows=1, eval_repeat=1)
    assert row["layers"] == 28
    parts = ("capture", "statistics", "solves", "error", "fingerprints", "layer_rest", "propagation", "loop_rest")
    assert all(row[p] >= 0 for p in parts if p != "loop_rest")
    assert sum(row[p] for p in parts) == pytest.approx(row["prune_total"])
    assert 0 < row["stats_hooks"] < row["statistics"]
    assert row["eval"] > 0 and row["bare_forward"] > 0 and row["ppl"] > 1
    assert "| solves |" in stages.render([row])


def test_peer_table_runs_without_peers_and_says_so():
    """Outside the peers' venv every peer is skipped with one line; this project and the
    reference still give a row with the same masks."""
    from benchmarks.peers.__main__ import layer_table, markdown

    lines = []
    rows = layer_table([(16, 32)], 256, 1, log=lines.append)
    assert len(rows) == 4 and all(r["sparsebench_same_mask"] for r in rows)
    skipped = [ln for ln in lines if "skipped" in ln]
    assert skipped and all("\n" not in ln for ln in skipped)
    assert "| sparsegpt 0.5: sparsebench |" in markdown(rows)
