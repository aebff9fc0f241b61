"""Uploaded zips: extracted inside their folder, within the limits, or refused with the reason."""

import stat
import zipfile

import pytest

from medfm.io.archive import ArchiveError, extract_zip


def make_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return path


def test_a_folder_of_files_is_extracted_as_is(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"series/1.dcm": b"one", "series/2.dcm": b"two"})
    (tmp_path / "out").mkdir()
    dest = extract_zip(archive, tmp_path / "out")
    assert (dest / "series/1.dcm").read_bytes() == b"one" and (dest / "series/2.dcm").read_bytes() == b"two"


@pytest.mark.parametrize("name", ["../escape.dcm", "/etc/escape.dcm", "a/../../escape.dcm", "..\\escape.dcm"])
def test_members_outside_the_folder_are_refused_before_anything_is_written(tmp_path, name):
    archive = make_zip(tmp_path / "a.zip", {"ok.dcm": b"x", name: b"y"})
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="outside"):
        extract_zip(archive, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "escape.dcm").exists()


def test_symbolic_links_are_refused(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as out:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        out.writestr(info, "/etc/passwd")
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_zip(archive, tmp_path / "out")


def test_a_bomb_is_refused_by_its_declared_size_and_too_many_members_by_count(tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", {"zeros": b"\0" * (8 << 20)})
    assert bomb.stat().st_size < 64 << 10  # deflate packs 8 MiB of zeros into a few KiB
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError, match="expands to"):
        extract_zip(bomb, tmp_path / "out", max_bytes=1 << 20)
    many = make_zip(tmp_path / "many.zip", {f"{i}.dcm": b"x" for i in range(11)})
    with pytest.raises(ArchiveError, match="11 files"):
        extract_zip(many, tmp_path / "out", max_files=10)


def test_lying_sizes_are_caught_while_writing(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"big": b"\1" * 4096})
    data = bytearray(archive.read_bytes())
    # Patch the central directory's uncompressed size (offset 24 of its entry) to claim 16 bytes.
    central = data.rindex(b"PK\x01\x02")
    data[central + 24:central + 28] = (16).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveError):
        extract_zip(archive, tmp_path / "out", max_bytes=1024)


def test_not_a_zip(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not a readable zip"):
        extract_zip(tmp_path / "x.zip", tmp_path)


# Damaged archives (found by evaluation/bench/fuzz_readers.py): ArchiveError, not zlib/zipfile internals.
def test_damaged_archives_are_archive_errors(tmp_path):
    import random

    payload = bytes(random.Random(0).choices(b"abcdefgh", k=20000))
    good = make_zip(tmp_path / "good.zip", {"a.dcm": payload}).read_bytes()
    data_start = good.index(b"a.dcm") + len("a.dcm")  # the local header's name, then the deflate stream
    deflate_broken = bytearray(good)
    deflate_broken[data_start + 3] ^= 0xFF
    version_7 = bytearray(good)
    central = good.index(b"PK\x01\x02")
    version_7[central + 6] = 70  # "version needed to extract": 7.0
    encrypted = bytearray(good)
    for header, flag_at in ((good.index(b"PK\x03\x04"), 6), (central, 8)):
        encrypted[header + flag_at] |= 1  # general purpose flag bit 0: encrypted
    for name, data in (("deflate.zip", deflate_broken), ("version.zip", version_7), ("encrypted.zip", encrypted)):
        (tmp_path / name).write_bytes(bytes(data))
        (tmp_path / name.replace(".zip", "")).mkdir()
        with pytest.raises(ArchiveError):
            extract_zip(tmp_path / name, tmp_path / name.replace(".zip", ""))
