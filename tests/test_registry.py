"""storage/registry.py on its own: reads that overlap, and changes made here while a read runs."""

from __future__ import annotations

import threading

from anthropic_gateway.storage.registry import Registry

TTL = 60.0  # no refresh starts on its own while a test runs


class Reads:
    """A registry's `read`: each call answers the next list the test handed in; `hold()` keeps the next call from
    answering until the test releases it."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.gates: list[threading.Event | None] = [None] * len(answers)
        self.started = threading.Event()

    def hold(self) -> threading.Event:
        self.gates[0] = threading.Event()
        return self.gates[0]

    def __call__(self) -> list[str]:
        answer, gate = self.answers.pop(0), self.gates.pop(0)
        if gate is not None:
            self.started.set()
            assert gate.wait(10)
        return answer


def in_a_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target)
    thread.start()
    return thread


def test_a_read_that_started_earlier_never_replaces_the_copy_a_later_read_made():
    reads = Reads(["old"], ["old", "new"])
    names = Registry("test", reads, lambda name: name, 10, TTL)
    release = reads.hold()
    slow = in_a_thread(names.refresh)
    assert reads.started.wait(10)
    names.load()  # starts after the slow read and answers first
    release.set()
    slow.join(10)
    assert set(names.snapshot()) == {"old", "new"}


def test_changes_made_here_while_a_read_runs_survive_it():
    reads = Reads(["kept", "gone"])
    names = Registry("test", reads, lambda name: name, 10, TTL)
    release = reads.hold()
    slow = in_a_thread(names.load)
    assert reads.started.wait(10)
    names.put("added")
    names.discard("gone")
    release.set()
    slow.join(10)
    assert set(names.snapshot()) == {"kept", "added"}


def test_at_most_limit_records_are_kept_the_oldest():
    names = Registry("test", Reads(["first", "second", "third"]), lambda name: name, 2, TTL)
    names.load()
    names.put("fourth")
    assert list(names.snapshot()) == ["first", "second"]


def test_without_a_limit_every_record_is_kept():
    """The registered tags' registry: a tag left out would have its limits skipped."""
    names = Registry("test", Reads(["first", "second", "third"]), lambda name: name, None, TTL)
    names.load()
    names.put("fourth")
    assert list(names.snapshot()) == ["first", "second", "third", "fourth"]
