"""The loop's batches are read one step ahead in a thread: the same tensors, in the same order."""

import threading

import torch

from cptkit.data.prefetch import Prefetcher


def test_each_step_gets_its_own_batch_and_the_next_one_is_read_ahead():
    made, started = [], {}
    release, began = threading.Event(), threading.Event()

    def make(k):
        started[k] = threading.current_thread().name
        if k == 2:
            began.set()
            release.wait(5)  # step 2's read is still going when step 1 is handed out
        made.append(k)
        return torch.full((2, 3), k)

    with Prefetcher(make, end=4) as batches:
        assert torch.equal(batches.get(0), torch.full((2, 3), 0))  # the first is read on the spot
        assert torch.equal(batches.get(1), torch.full((2, 3), 1))
        assert began.wait(5) and started[2].startswith("cpt-batches")  # read ahead, in the thread
        release.set()
        assert [int(batches.get(k)[0, 0]) for k in (2, 3)] == [2, 3]
    assert sorted(made) == [0, 1, 2, 3]  # nothing past the stage's last step


def test_a_jump_reads_the_asked_step_and_an_error_surfaces_in_the_loop():
    def make(k):
        if k == 6:
            raise ValueError("shard gone")
        return torch.tensor([k])

    with Prefetcher(make, end=8) as batches:
        assert int(batches.get(3)) == 3
        assert int(batches.get(5)) == 5  # step 4 was read ahead and is not used
        try:
            batches.get(6)
        except ValueError as e:
            assert "shard gone" in str(e)
        else:
            raise AssertionError("the read error was lost")
