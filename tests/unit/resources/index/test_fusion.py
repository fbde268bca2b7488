"""Fusion on hand-made rankings: relative scores (the default) and reciprocal ranks."""

import pytest

from grace.resources.index.fusion import RRF_K, Fusion


def test_relative_fusion_scales_each_side_to_its_own_best_and_last_and_weights_them():
    dense = [(1, 0.9), (2, 0.8), (3, 0.5)]
    lexical = [(4, 12.0), (2, 9.0), (5, 3.0)]
    fused = Fusion("relative", dense_weight=0.75).fuse(dense, lexical)
    score = {entry.chunk_id: entry.score for entry in fused}
    assert score == pytest.approx(
        {1: 0.75, 2: 0.75 * 0.75 + 0.25 * (6 / 9), 3: 0.0, 4: 0.25, 5: 0.0},
    )
    assert [entry.chunk_id for entry in fused] == [1, 2, 4, 3, 5]
    assert [(entry.dense_rank, entry.lexical_rank, entry.found_by) for entry in fused[:3]] == [
        (1, None, "dense"),
        (2, 2, "both"),
        (None, 1, "lexical"),
    ]


def test_a_weak_lexical_spread_moves_the_dense_order_less_than_rank_fusion_does():
    # The lexical side matches 3, 2 and 1 about equally (common words): relative fusion keeps the
    # dense winner first; rank fusion, blind to the spread, puts the chunk both sides found first.
    dense = [(1, 0.70), (2, 0.55), (3, 0.40)]
    lexical = [(2, 5.02), (3, 5.01), (6, 5.0)]
    assert Fusion("relative").fuse(dense, lexical)[0].chunk_id == 1
    assert Fusion("rrf", dense_weight=0.5).fuse(dense, lexical)[0].chunk_id == 2


def test_rank_fusion_weights_each_side_by_rank():
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    lexical = [(4, 12.0), (2, 9.0)]
    fused = Fusion("rrf", dense_weight=0.5).fuse(dense, lexical)
    assert [entry.chunk_id for entry in fused] == [2, 1, 4, 3]
    assert fused[0].score == pytest.approx(1 / (RRF_K + 2))
    heavy = Fusion("rrf", dense_weight=0.9).fuse(dense, lexical)
    assert [entry.chunk_id for entry in heavy] == [2, 1, 3, 4]  # the lexical side's first falls below the dense third


@pytest.mark.parametrize("method", ["relative", "rrf"])
def test_ties_go_by_chunk_id_and_only_lexical_keeps_the_lexical_side_alone(method):
    fusion = Fusion(method, dense_weight=0.5)
    assert [entry.chunk_id for entry in fusion.fuse([(9, 0.5)], [(3, 1.0)])] == [3, 9]
    assert [entry.chunk_id for entry in fusion.fuse([(9, 0.5), (3, 0.4)], [(3, 1.0)], only_lexical=True)] == [3]
    assert fusion.fuse([], []) == []


def test_a_side_whose_scores_all_tie_counts_each_of_them_fully():
    fused = Fusion("relative", dense_weight=0.5).fuse([(1, 0.3), (2, 0.3)], [])
    assert [entry.score for entry in fused] == [0.5, 0.5]
