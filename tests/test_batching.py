"""``length_runs``: batches of sorted lengths with bounded padding (evaluation and finetuning share it)."""

from litgpt_clone.data.batching import length_runs

LENGTHS = [40, 39, 38, 30, 29, 20, 20, 19, 12, 11, 10, 3]  # longest first


def padding_share(run: list[int]) -> float:
    lengths = [LENGTHS[i] for i in run]
    return len(lengths) * lengths[0] / sum(lengths) - 1


def test_runs_cover_every_position_in_order_within_batch_size_and_padding():
    runs = length_runs(LENGTHS, batch_size=3, max_padding=0.1)
    assert [i for run in runs for i in run] == list(range(len(LENGTHS)))
    assert runs == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9, 10], [11]]
    assert all(len(run) <= 3 and padding_share(run) <= 0.1 for run in runs)


def test_small_runs_are_not_cut_within_free_tokens():
    """A run of at most free_tokens padded tokens keeps growing past batch_size and max_padding (a GPU pass that
    small costs its launches); a larger one is cut as before."""
    assert length_runs(LENGTHS, batch_size=3, max_padding=0.1, free_tokens=0) == length_runs(LENGTHS, 3, 0.1)
    runs = length_runs(LENGTHS, batch_size=3, max_padding=0.1, free_tokens=120)
    assert runs == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9, 10, 11]]
    assert [len(run) * LENGTHS[run[0]] for run in runs] == [120, 120, 95]  # padded tokens
    assert padding_share(runs[2]) > 0.1  # 95 padded tokens for 55 real ones: free
    assert length_runs(LENGTHS, batch_size=3, max_padding=0.1, free_tokens=10_000) == [list(range(len(LENGTHS)))]
