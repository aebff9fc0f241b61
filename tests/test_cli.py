"""CLI verbs beyond `run` (which tests/test_pipeline.py covers)."""

import json

import pandas as pd

from medfm.cli import main


def test_cohort_describe_prints_and_writes_the_table(tmp_path, capsys):
    rows = [{"patient_id": f"P{i // 2}", "study_id": f"S{i}", "site": "a" if i < 6 else "b", "age": 40 + i,
             "sex": "F" if i % 2 else "M", "img": f"x{i}.png", "finding": int(i % 3 == 0)} for i in range(10)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "c.yaml").write_text("name: small\nmanifest: manifest.csv\nmodalities: {cxr: img}\n"
                                     "labels: [finding]\nmetadata: [site, age, sex]\n"
                                     "split: {fractions: {train: 0.6, test: 0.4}}\n")
    assert main(["cohort", "describe", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Patients" in printed and "finding" in printed
    described = json.loads((tmp_path / "out/cohort_description.json").read_text())
    overall = described["groupings"]["overall"]["all"]
    assert overall["labels"]["finding"] == {"positive": 4, "known": 10, "pct": 40.0}  # i = 0, 3, 6, 9
    assert set(described["groupings"]["split"]) == {"train", "test"}
    assert set(described["groupings"]["site"]) == {"a", "b"}
    assert (tmp_path / "out/cohort_description.md").is_file()


def test_inspect_names_identifier_fields_but_never_prints_their_values(tmp_path, capsys):
    import numpy as np

    from tests.io.test_readers import write_radiograph

    path = write_radiograph(tmp_path / "x.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4) * 10)
    import pydicom

    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-778899"
    ds.save_as(path, enforce_file_format=True)
    for flags in ([], ["--json"]):
        assert main(["inspect", str(path), *flags]) == 0
        out = capsys.readouterr().out
        assert "PatientName" in out and "PatientID" in out
        assert "Doe" not in out and "778899" not in out
    parsed = json.loads((main(["inspect", str(path), "--json"]), capsys.readouterr().out)[1])
    assert parsed["shape"] == [1, 4, 4] and parsed["value_range"] == [0.0, 150.0]


def test_inspect_unsupported_file_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "notes.xyz").write_bytes(b"\x00\x01 not a medical file")
    assert main(["inspect", str(tmp_path / "notes.xyz")]) == 2
    err = capsys.readouterr().err
    assert "notes.xyz" in err and "Traceback" not in err


def test_pretrain_refuses_to_reuse_a_state_silently_and_resumes_when_asked(tmp_path, capsys):
    from tests.train.test_distributed import write_tiny_pipeline

    pipeline = write_tiny_pipeline(tmp_path, patients=12)
    assert main(["pretrain", str(pipeline)]) == 0
    log = (tmp_path / "out/checkpoint/train_log.jsonl").read_text().splitlines()
    assert len(log) >= 2 and "pretrained" in capsys.readouterr().out
    assert main(["pretrain", str(pipeline)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["pretrain", str(pipeline), "--resume"]) == 0  # finished: nothing left, weights unchanged
    assert "resumed from step" in capsys.readouterr().out
    assert (tmp_path / "out/checkpoint/train_log.jsonl").read_text().splitlines() == log
    assert main(["pretrain", str(pipeline), "--fresh"]) == 0


def test_index_build_info_search_and_remove(indexed_cohort, tmp_path, capsys):
    out = tmp_path / "index"
    args = ["--model", str(indexed_cohort.model), "--cohort", str(indexed_cohort.cohort)]
    assert main(["index", "build", *args, "--out", str(out), "--kind", "exact"]) == 0
    assert main(["index", "info", "--index", str(out), "--json"]) == 0
    capsys.readouterr()
    assert main(["index", "add", *args, "--index", str(out)]) == 0
    assert "added 0 cases" in capsys.readouterr().out
    assert main(["index", "info", "--index", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    manifest = pd.read_csv(indexed_cohort.manifest)
    assert info["by_modality"]["cxr"] == manifest["cxr_path"].notna().sum() and info["kind"] == "exact"

    assert main(["search", "--index", str(out), "--text", "pleural effusion", "-k", "4", "--modality", "cxr",
                 "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["query"] == {"kind": "text", "modality": "report"}
    assert len(found["results"]) == 4 and {r["modality"] for r in found["results"]} == {"cxr"}
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)

    study = manifest.iloc[0]["study_id"]
    assert main(["search", "--index", str(out), "--study", study, "--as", "cxr", "--site", "site_a"]) == 0
    printed = capsys.readouterr().out
    assert "similar cases to the cxr case" in printed and study not in printed.split("similar cases")[1]
    assert main(["index", "remove", "--index", str(out), study]) == 0
    assert main(["search", "--index", str(out), "--study", study, "--as", "cxr"]) == 2
    assert "not in the index" in capsys.readouterr().err


def test_search_a_file_of_unknown_modality_is_one_line_and_exit_2(indexed_cohort, tmp_path, capsys):
    (tmp_path / "note.txt").write_text("hello")
    assert main(["search", "--index", str(indexed_cohort.index), str(tmp_path / "note.txt")]) == 2
    err = capsys.readouterr().err
    assert "note.txt" in err and "Traceback" not in err


def test_cohort_check_says_what_is_wrong_in_one_line(tmp_path, capsys):
    rows = [{"patient_id": f"P{i}", "study_id": f"S{i}", "img": f"x{i}.png", "finding": i % 2} for i in range(4)]
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    (tmp_path / "c.yaml").write_text("name: small\nmanifest: manifest.csv\nmodalities: {cxr: img}\nlabels: [finding]\n")
    assert main(["cohort", "check", str(tmp_path / "c.yaml")]) == 0
    assert "4 studies of 4 patients" in capsys.readouterr().out
    assert main(["cohort", "check", str(tmp_path / "c.yaml"), "--files"]) == 2  # x0.png ... do not exist
    error = capsys.readouterr().err.strip()
    assert "x0.png" in error and "Traceback" not in error
    rows[3]["study_id"] = "S0"
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    assert main(["cohort", "check", str(tmp_path / "c.yaml")]) == 2
    assert "S0" in capsys.readouterr().err
