"""bench/index.py: verdict lines stay true (exact defaults, cut-short builds), results re-render without measuring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import index as bi
from bench._report import write_section


def _row(data: str, n: int, index: str, params: str, recall: float, p50: float, searched_n: int = 0) -> bi.Row:
    lat = bi.Latency(p50, p50 * 2, p50, p50 * 2, p50 * 1000)
    return bi.Row(data, n, index, params, 1.0, n * 256, recall, lat, "cpu", "", searched_n or n)


def _results(rows: list[bi.Row], sizes: list[int], data: list[str]) -> bi.Results:
    return bi.Results(rows, (15.5, 12.0, 18.0), sizes, data, 50, 2, "python -m bench.index", "2026-01-01 00:00 UTC",
                      "test machine", "1.0", 0, "auto", 12.0, ["g n=5,000,000: only exact search measured."])


@pytest.fixture
def res() -> bi.Results:
    rows = [
        _row("c", 100_000, "Flat (exact)", "-", 1.0, 1.0),
        _row("c", 100_000, "HNSW32", "efSearch=64", 0.98, 0.13),
        _row("c", 1_000_000, "Flat (exact)", "-", 1.0, 12.0),
        _row("c", 1_000_000, "HNSW32", "efSearch=128", 0.974, 0.45),
        _row("c", 1_000_000, "HNSW32", "efSearch=16", 0.80, 0.08),
        _row("g", 1_000_000, "Flat (exact)", "-", 1.0, 23.0),
        _row("g", 1_000_000, "HNSW32", "efSearch=128", 0.903, 0.26, searched_n=50_000),
        _row("g", 1_000_000, "HNSW32", "efSearch=256", 0.979, 0.50, searched_n=50_000),
        _row("g", 1_000_000, "IVF4000,PQ32", "nprobe=64", 0.31, 0.38),
    ]
    return _results(rows, [100_000, 1_000_000], ["c", "g"])


def test_exact_default_is_not_judged_against_the_1m_target(res: bi.Results) -> None:
    lines = bi.verdict(res)
    first = [x for x in lines if x.startswith("- c 100,000")]
    assert len(first) == 1 and "`Flat`" in first[0] and "MISSES" not in first[0] and "does not apply" in first[0]


def test_full_size_default_meets_or_misses_by_the_numbers(res: bi.Results) -> None:
    line = next(x for x in bi.verdict(res) if x.startswith("- c 1,000,000"))
    assert "26.7x faster than exact -> meets the target" in line
    res.rows[3] = _row("c", 1_000_000, "HNSW32", "efSearch=128", 0.94, 0.45)
    line = next(x for x in bi.verdict(res) if x.startswith("- c 1,000,000"))
    assert "MISSES the target" in line


def test_prefix_rows_are_never_compared_with_exact_search_on_the_full_catalogue(res: bi.Results) -> None:
    lines = bi.verdict(res)
    i = next(k for k, x in enumerate(lines) if x.startswith("- g 1,000,000"))
    block = lines[i:i + 4]
    assert "50,000-item prefix only" in block[0] and "NOT checked" in block[0] and "faster" not in block[0]
    assert "no ANN configuration measured on all 1,000,000 items reached recall@20 0.95" in block[1]
    assert "`IVF4000,PQ32` nprobe=64 at 0.310" in block[1]
    assert "prefix only (not comparable" in block[2] and "efSearch=256 reaches recall@20 0.979" in block[2]
    assert not any("faster than exact" in x for x in block)
    cells = dict(zip(bi.headers(2), res.rows[6].cells(16.5, 23.0), strict=True))
    assert cells["speed-up vs exact"] == "n/c (50,000-item prefix)"
    assert cells["p50 / scan estimate"].endswith("(prefix)")


def test_exact_scan_faster_than_the_bandwidth_estimate_is_explained(res: bi.Results) -> None:
    lines = [x for x in bi.verdict(res) if "exact-scan estimate" in x]
    small, big = lines[0], lines[1]
    assert "0.61x the estimate (below 1" in small and "CPU caches" in small  # 24 MiB catalogue
    assert "0.73x the estimate (below 1" in big and "CPU caches" not in big  # 244 MiB catalogue
    assert "(below" not in lines[2]  # gaussian 1M: 1.39x, above the estimate


def test_results_round_trip_through_the_rendered_section(res: bi.Results, tmp_path: Path) -> None:
    doc = tmp_path / "B.md"
    write_section("index", bi.render(res, None), doc)
    back = bi.results_from_doc(doc)
    assert back.to_json() == res.to_json()
    path = tmp_path / "r.json"
    bi.save_results(res, path)
    assert bi.load_results(path).to_json() == res.to_json()
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"not a bench\.index results file"):
        bi.load_results(path)


def test_sections_written_before_results_json_existed_still_re_render(res: bi.Results, tmp_path: Path) -> None:
    """The old report embedded only the rows; the run's description comes back from its prose."""
    body = bi.render(res, None)
    raw = json.dumps([{**json.loads(json.dumps(r.__dict__, default=lambda o: o.__dict__))} for r in res.rows])
    body = body.split("```json\n")[0] + "```json\n" + raw + "\n```\n</details>"
    body = body.replace("exact-scan estimate = n*d*4", "exact-search floor = n*d*4")
    doc = tmp_path / "B.md"
    write_section("index", body, doc)
    back = bi.results_from_doc(doc)
    assert [r.recall for r in back.rows] == [r.recall for r in res.rows]
    assert back.sizes == res.sizes and back.queries == 50 and back.threads == 2 and back.started == res.started
    assert back.notes == res.notes and back.bandwidth[0] == pytest.approx(15.5, rel=1e-3)
    assert bi.verdict(back) == bi.verdict(res)


def test_missing_section_is_a_clear_error(tmp_path: Path) -> None:
    doc = tmp_path / "B.md"
    doc.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no index section"):
        bi.results_from_doc(doc)


def test_small_run_saves_results_and_report_only_re_renders_them(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(bi, "memory_bandwidth", lambda: (15.0, 14.0, 16.0))  # skip the 1 GiB scan
    cache = tmp_path / "cache"
    assert bi.main(["--sizes", "3000", "--data", "clustered", "--indexes", "hnsw", "--queries", "70",
                    "--cache", str(cache), "--no-write"]) == 0
    saved = bi.load_results(cache / bi.RESULTS_NAME)
    assert {r.index for r in saved.rows} == {"Flat (exact)", "HNSW32"}
    assert len(saved.rows) == 1 + len(bi.EF_SWEEP) + 1  # + the setting the exporter's tuning picks
    assert sum("EXPORTER-TUNED" in r.note for r in saved.rows) == 1
    assert (cache / "clustered-3000-s0-HNSW32.faiss").is_file()
    capsys.readouterr()
    assert bi.main(["--report-only", "--no-write", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "clustered 3,000: exporter default `Flat`" in out


def test_empty_cache_argument_disables_the_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(bi, "memory_bandwidth", lambda: (15.0, 14.0, 16.0))
    monkeypatch.chdir(tmp_path)
    assert bi.main(["--sizes", "2000", "--data", "gaussian", "--indexes", "hnsw", "--queries", "64", "--cache", "",
                    "--no-write"]) == 0
    assert list(tmp_path.iterdir()) == []  # nothing written to the working directory


def test_large_default_is_swept_and_tuned_as_the_exporter_does(tmp_path: Path, monkeypatch, capsys) -> None:
    """`--indexes default`: the exporter's >5M default at the benchmark's size, built by the exporter's code,
    swept over nprobe x k_factor_rf, plus the row the exporter's tuning picks (on other queries), judged in the
    verdict against the 0.95 target."""
    from training.export.index import large_factory

    monkeypatch.setattr(bi, "memory_bandwidth", lambda: (15.0, 14.0, 16.0))
    assert bi.main(["--sizes", "20000", "--data", "clustered", "--indexes", "default", "--queries", "80",
                    "--tune-queries", "120", "--cache", "", "--no-write"]) == 0
    out = capsys.readouterr().out
    name = large_factory(20_000, bi.D)
    assert name.endswith(",PQ32x4fs,Refine(SQ8)") and name in out
    line = next(x for x in out.splitlines() if "the >5M default" in x)
    assert f"`{name}` as the exporter tunes it (nprobe=" in line and "k_factor_rf=" in line
    assert "(target 0.95: met)" in line or "MISSED" in line
