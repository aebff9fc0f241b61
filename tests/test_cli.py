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
