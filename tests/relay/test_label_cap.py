"""Bounded metric labels: the first `limit` agents keep their label, later ones sum into `other`."""

from __future__ import annotations

from quota.metrics import OTHER, LabelCap


def test_labels_beyond_the_limit_are_summed_into_other() -> None:
    """Three agents over a cap of two: the third is `other`, totals are kept per direction."""
    cap = LabelCap(2)
    values = [(("a", "up"), 1), (("b", "up"), 2), (("c", "up"), 4), (("c", "down"), 8)]
    assert cap.sum_by(values) == {
        ("a", "up"): 1,
        ("b", "up"): 2,
        (OTHER, "up"): 4,
        (OTHER, "down"): 8,
    }


def test_a_kept_label_stays_kept_in_later_scrapes() -> None:
    """An agent seen first keeps its own label even when others appear before it next time."""
    cap = LabelCap(1)
    assert cap.label("a") == "a"
    assert (cap.label("b"), cap.label("a")) == (OTHER, "a")
