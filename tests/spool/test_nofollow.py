"""The spool's one rule for walking below its root: no link is followed at any component, and
what was opened stays what is acted on, whatever happens to the names afterwards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.spool.nofollow import Dir, LinkRefused, open_below, subfolders


def test_a_link_at_any_component_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "spool", tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.yaml").write_text("outside")
    (root / "inbox" / "real").mkdir(parents=True)
    os.symlink(outside, root / "inbox" / "lnk")
    os.symlink(outside / "deep", root / "inbox" / "real" / "deep")
    with pytest.raises(LinkRefused):
        open_below(root, ["inbox", "lnk"])
    with pytest.raises(LinkRefused):
        open_below(root, ["inbox", "real", "deep"])
    with open_below(root, ["inbox"]) as inbox, pytest.raises(LinkRefused):
        inbox.open_file("lnk")
    assert subfolders(root / "inbox") == ["real"]


def test_a_folder_swapped_for_a_link_after_it_was_opened_changes_nothing(tmp_path: Path) -> None:
    inbox, outside, work = tmp_path / "inbox", tmp_path / "outside", tmp_path / "work"
    for d in (inbox / "sw", outside, work):
        d.mkdir(parents=True)
    (inbox / "sw" / "job.yaml").write_text("inside")
    (outside / "job.yaml").write_text("outside")
    with open_below(inbox, ["sw"]) as folder, Dir.root(work) as dst:
        os.rename(inbox / "sw", inbox / ".sw-old")
        os.symlink(outside, inbox / "sw")
        assert folder.read_bytes("job.yaml", 100) == b"inside"
        folder.rename("job.yaml", dst, "taken.yaml")
    assert (work / "taken.yaml").read_text() == "inside"
    assert (outside / "job.yaml").read_text() == "outside"


def test_names_with_a_separator_are_not_single_entries(tmp_path: Path) -> None:
    with Dir.root(tmp_path) as d:
        for bad in ("a/b", "..", ".", ""):
            with pytest.raises(ValueError):
                d.lstat(bad)
