"""Reciprocal rank fusion on hand-made rankings."""

from grace.resources.index.fusion import RRF_K, fuse


def test_a_chunk_both_sides_rank_well_beats_one_a_single_side_ranks_first():
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    lexical = [(4, 12.0), (2, 9.0)]
    fused = fuse(dense, lexical)
    assert [entry.chunk_id for entry in fused] == [2, 1, 4, 3]
    two = fused[0]
    assert (two.dense_rank, two.lexical_rank, two.found_by) == (2, 2, "both")
    assert two.score == 2 / (RRF_K + 2)
    assert [(entry.found_by, entry.lexical_rank) for entry in fused[1:]] == [
        ("dense", None),
        ("lexical", 1),
        ("dense", None),
    ]


def test_ties_go_by_chunk_id_and_only_lexical_keeps_the_lexical_side_alone():
    fused = fuse([(9, 0.5)], [(3, 1.0)])
    assert [entry.chunk_id for entry in fused] == [3, 9]
    assert [entry.chunk_id for entry in fuse([(9, 0.5), (3, 0.4)], [(3, 1.0)], only_lexical=True)] == [3]
    assert fuse([], []) == []
