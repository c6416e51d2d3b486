"""Precision-recall curves over score thresholds and the operating point chosen on them."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.extensions.deepdisc.core.comparison import precision_recall_from_matches
from lsst.meas.extensions.deepdisc.core.matching import SourceArrays
from lsst.meas.extensions.deepdisc.core.operating_point import (
    choose_operating_point,
    precision_recall_curve,
)
from lsst.meas.extensions.deepdisc.core.threads import torch_threads


def _catalogs() -> tuple[SourceArrays, SourceArrays]:
    # Ten reference sources on a line; detections on six of them with high scores, and four spurious ones
    # far away with low scores.
    reference = SourceArrays(x=np.arange(10) * 20.0, y=np.zeros(10))
    x = np.concatenate([np.arange(6) * 20.0 + 0.5, 500.0 + np.arange(4) * 20.0])
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.6, 0.3, 0.5, 0.2, 0.15, 0.1])
    return reference, SourceArrays(x=x, y=np.zeros(10), score=scores)


def test_curve_counts_the_detections_above_each_threshold() -> None:
    reference, found = _catalogs()
    curve = precision_recall_curve([reference], [found], [0.1, 0.25, 0.55, 0.99], iou_type="none")
    by_threshold = {entry["threshold"]: entry for entry in curve}
    assert [entry["threshold"] for entry in curve] == [0.1, 0.25, 0.55, 0.99]
    assert by_threshold[0.1]["n_detections"] == 10 and by_threshold[0.1]["n_matched"] == 6
    assert by_threshold[0.25]["n_detections"] == 7 and by_threshold[0.25]["n_matched"] == 6
    assert by_threshold[0.55]["n_detections"] == 5 and by_threshold[0.55]["precision"] == 1.0
    assert by_threshold[0.55]["recall"] == 0.5
    assert by_threshold[0.99]["n_detections"] == 0 and by_threshold[0.99]["recall"] == 0.0
    with pytest.raises(ValueError, match="scores"):
        precision_recall_curve([reference], [SourceArrays(x=[1.0], y=[0.0])], [0.5], iou_type="none")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        precision_recall_curve([reference], [found], [1.5], iou_type="none")


def test_operating_point_rules() -> None:
    reference, found = _catalogs()
    curve = precision_recall_curve([reference], [found], [0.1, 0.25, 0.55, 0.99], iou_type="none")
    best = choose_operating_point(curve, "best_f1")
    assert best["threshold"] == 0.25 and best["rule_met"]  # F1 6/7 & 0.6 beats 1.0 & 0.5
    strict = choose_operating_point(curve, "min_precision", min_precision=0.98)
    assert strict["threshold"] == 0.55 and strict["precision"] == 1.0
    impossible = [dict(entry, precision=0.5) for entry in curve]
    fallback = choose_operating_point(impossible, "min_precision", min_precision=0.98)
    assert not fallback["rule_met"] and fallback["threshold"] == best["threshold"]
    with pytest.raises(ValueError, match="rule"):
        choose_operating_point(curve, "median")


def test_curve_from_a_match_table() -> None:
    table = Table()
    table["row_type"] = ["reference"] * 4 + ["detection"] * 3
    table["deepdisc_matched"] = [True, True, True, False, False, False, False]
    table["deepdisc_score"] = [0.9, 0.6, 0.2, np.nan, np.nan, np.nan, np.nan]
    table["det_method"] = ["", "", "", "", "deepdisc", "deepdisc", "sep"]
    table["det_score"] = [np.nan] * 4 + [0.7, 0.1, np.nan]
    curve = precision_recall_from_matches(table, "deepdisc", [0.0, 0.5, 0.8])
    assert list(curve["n_matched"]) == [3, 2, 1]
    assert list(curve["n_det"]) == [5, 3, 1]
    assert np.allclose(curve["recall"], [0.75, 0.5, 0.25])
    assert np.allclose(curve["precision"], [0.6, 2 / 3, 1.0])
    with pytest.raises(ValueError, match="no 'sep_score'"):
        precision_recall_from_matches(table, "sep", [0.5])


def test_torch_threads_follow_request_environment_and_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert torch_threads(3) == (3, "requested")
    threads, reason = torch_threads(0, share=1)
    assert threads >= 1 and "core" in reason
    assert torch_threads(0, share=10**6)[0] == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert torch_threads(0) == (1, "OMP_NUM_THREADS")
    with pytest.raises(ValueError):
        torch_threads(-1)


def test_torch_cpu_settings_restore_the_process_state() -> None:
    import torch

    from lsst.meas.extensions.deepdisc.core.threads import torch_cpu_settings

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_cpu_settings(target) as threads:
        assert threads == target == torch.get_num_threads()
        assert torch.tensor([1e-320], dtype=torch.float64).item() == 0.0  # Denormals flushed inside ...
    assert torch.get_num_threads() == before
    assert torch.tensor([1e-320], dtype=torch.float64).item() != 0.0  # ... and not after (IEEE again).
