"""The real pipeline end to end on a tiny synthetic cohort, through the CLI."""

import json

import pandas as pd
import pytest

from medfm.cli import main
from medfm.evaluation.plan import plan_fingerprint

from .conftest import REPO


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cohort = (REPO / "cohorts/demo.yaml").read_text()
    cohort = cohort.replace("../data/demo/manifest.csv", "data/manifest.csv").replace("patients: 600", "patients: 60")
    (root / "cohort.yaml").write_text(cohort)
    (root / "pipeline.yaml").write_text(
        "name: tiny\noutput_dir: out\ncohort: cohort.yaml\n"
        f"model: {REPO}/configs/models/tiny.yaml\ntrain: {REPO}/configs/train/tiny.yaml\n"
        f"plan: {REPO}/evaluation/plans/demo.yaml\n")
    assert main(["run", str(root / "pipeline.yaml")]) == 0
    return root


def test_outputs_hold_what_the_demo_promises(tiny_run):
    results = json.loads((tiny_run / "out/results.json").read_text())
    expected = {"cxr": ["cardiomegaly", "pleural_effusion"], "ecg": ["atrial_fibrillation", "lvh"],
                "oct": ["drusen", "intraretinal_fluid"], "fundus": ["drusen", "haemorrhage"], "ct": ["lung_nodule"]}
    for modality, findings in expected.items():
        for finding in findings:
            task = results["zero_shot"][modality][finding]
            assert task["auroc"] is None or 0.0 <= task["auroc"] <= 1.0
            assert len(task["prompt_auroc"]["per_prompt"]) == 8
            assert task["n_positive"] + task["n_negative"] > 0
    assert "macro_auroc" in results["zero_shot"]
    assert results["plan"]["sha256"] == plan_fingerprint(REPO / "evaluation/plans/demo.yaml")
    assert set(results["retrieval"]) == {"cxr", "ecg", "oct", "fundus", "ct"}  # every image modality vs report
    for directions in results["retrieval"].values():
        for recall in directions.values():
            assert recall["n"] >= 2 and 0 <= recall["recall@1"] <= recall["recall@5"] <= recall["recall@10"] <= 1
    assert results["timing"]["total_s"] > 0
    assert set(results["case_search"]) == {"cxr", "ecg", "oct", "fundus", "ct"}
    for search in results["case_search"].values():
        assert search["n_queries"] > 0 and 0 <= search["precision@10"] <= 1 and 0 < search["chance"] <= 1
    assert results["pretrain"]["epochs"] == 2 and len(results["pretrain"]["history"]) == 2
    html = (tiny_run / "out/report.html").read_text()
    assert "pleural_effusion" in html and "Macro AUROC" in html and "Cross-modal retrieval" in html
    for section in ("summary", "intended-use", "data", "model", "methods", "results", "cross-source", "subgroups",
                    "retrieval", "failures", "limitations", "provenance", "checklist"):
        assert f'<section id="{section}"' in html
    assert (tiny_run / "out/report.pdf").read_bytes().startswith(b"%PDF-")


def test_the_validation_report_is_rebuilt_from_the_stored_artifacts_alone(tiny_run, capsys):
    out = tiny_run / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(results["validation"]["heads"]) == {"zero_shot", "linear_probe", "knn"}
    assert set(results["validation"]["heads"]["zero_shot"]) == {"test", "external"}
    assert results["validation"]["cross_source"]["device"]["cardiomegaly/cxr"]["columns"]
    assert (out / "plan.yaml").read_bytes() == (REPO / "evaluation/plans/demo.yaml").read_bytes()
    assert main(["report", "rebuild", str(out), "--no-pdf"]) == 0
    assert "all equal to results.json" in capsys.readouterr().out


def test_the_external_split_holds_every_patient_of_the_unseen_device(tiny_run):
    splits = pd.read_csv(tiny_run / "out/private/splits.csv")
    manifest = pd.read_csv(tiny_run / "data/manifest.csv").merge(splits, on=["study_id", "patient_id"])
    corvid = set(manifest.loc[manifest["cxr_device"] == "Corvid DX-9", "patient_id"])
    assert corvid and set(manifest.loc[manifest["split"] == "external", "patient_id"]) == corvid
    sources = json.loads((tiny_run / "out/results.json").read_text())["validation_inputs"]["training_sources"]
    assert "Corvid DX-9" not in sources["device"]["cxr"]


def test_case_index_holds_every_image_of_every_split(tiny_run):
    from medfm.heads.retrieval import CaseIndex

    manifest = pd.read_csv(tiny_run / "data/manifest.csv")
    images = sum(int(manifest[f"{m}_path"].notna().sum()) for m in ("cxr", "ecg", "oct", "fundus", "ct"))
    index = CaseIndex.load(tiny_run / "out/index")
    assert len(index) == images == json.loads((tiny_run / "out/results.json").read_text())["index"]["cases"]
    assert len(list((tiny_run / "out/index/thumbnails").glob("*.png"))) == images


def test_predictions_hold_one_row_per_study_and_task_and_reproduce_the_aurocs(tiny_run):
    from medfm.evaluation.metrics import auroc

    results = json.loads((tiny_run / "out/results.json").read_text())
    predictions = pd.read_parquet(tiny_run / "out/predictions.parquet")
    splits = pd.read_csv(tiny_run / "out/private/splits.csv").set_index("study_id")["split"]
    links = pd.read_csv(tiny_run / "out/private/linkage.csv").set_index("study")["study_id"]
    assert "study_id" not in predictions
    predictions = predictions.assign(study_id=predictions["study"].map(links))
    assert set(predictions["split"]) == {"val", "test", "external"}
    assert (predictions["study_id"].map(splits) == predictions["split"]).all()
    assert not predictions.duplicated(["study_id", "task", "head"]).any()
    assert set(predictions["head"]) <= {"zero_shot", "linear_probe", "knn"}
    fitted = predictions[predictions["head"] != "zero_shot"]
    assert fitted.empty or (fitted["split"] != "train").all()
    manifest = pd.read_csv(tiny_run / "data/manifest.csv")
    assert not set(predictions["patient"]) & set(manifest["patient_id"])  # pseudonyms, never the id
    per_patient = predictions.groupby("study_id")["patient"].nunique()
    assert (per_patient == 1).all()
    predictions = predictions[predictions["head"] == "zero_shot"]
    for task in results["zero_shot_tasks"]:
        rows = predictions[(predictions["task"] == f"{task['finding']}/{task['modality']}")
                           & (predictions["split"] == "test")]
        assert len(rows) == task["n_positive"] + task["n_negative"] + rows["label"].isna().sum()
        if task["auroc"] is not None:
            assert auroc(rows["label"].to_numpy(), rows["score"].to_numpy()) == pytest.approx(task["auroc"])
    assert ((predictions["probability"] > 0) & (predictions["probability"] < 1)).all()
    for task in results["zero_shot_tasks"]:  # the plan's analyses, from the predictions alone
        analysed = results["validation"]["heads"]["zero_shot"]["test"][f"{task['finding']}/{task['modality']}"]
        analysed = analysed.get("auroc") or {"estimate": None, "method": "patients"}
        if task["auroc"] is not None:
            assert analysed["estimate"] == pytest.approx(task["auroc"]) and "patients" in analysed["method"]


def test_splits_keep_patients_apart_and_cover_the_cohort(tiny_run):
    splits = pd.read_csv(tiny_run / "out/private/splits.csv")
    manifest = pd.read_csv(tiny_run / "data/manifest.csv")
    assert len(splits) == len(manifest) and manifest["patient_id"].nunique() == 60
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "val", "test", "external"}


def test_checkpoint_loads_and_rerun_resumes_instead_of_retraining(tiny_run, capsys):
    from medfm.models import MultimodalModel

    MultimodalModel.from_pretrained(tiny_run / "out/checkpoint")
    before = (tiny_run / "out/checkpoint/model.safetensors").read_bytes()
    assert main(["run", str(tiny_run / "pipeline.yaml")]) == 0
    out = capsys.readouterr().out
    assert "already synthesized" in out and "report:" in out
    results = json.loads((tiny_run / "out/results.json").read_text())
    assert results["pretrain"]["resumed_from_epoch"] == 2
    assert (tiny_run / "out/checkpoint/model.safetensors").read_bytes() == before


def test_near_duplicate_images_across_splits_stop_the_run(tiny_run, capsys):
    # The synthetic radiographs share one phantom template: with a loose threshold every
    # pair counts as near-identical, so the opt-in check must refuse the split.
    cohort = (tiny_run / "cohort.yaml").read_text() + "near_duplicates: {column: cxr_path, max_distance: 64}\n"
    (tiny_run / "cohort_dup.yaml").write_text(cohort)
    pipeline = (tiny_run / "pipeline.yaml").read_text().replace("cohort: cohort.yaml", "cohort: cohort_dup.yaml")
    (tiny_run / "pipeline_dup.yaml").write_text(pipeline.replace("output_dir: out", "output_dir: out_dup"))
    assert main(["run", str(tiny_run / "pipeline_dup.yaml")]) == 2
    err = capsys.readouterr().err
    assert "near-identical" in err or "near-duplicate" in err.lower()
    assert not (tiny_run / "out_dup/results.json").exists()


def test_decisions_are_the_development_thresholds_applied(tiny_run):
    results = json.loads((tiny_run / "out/results.json").read_text())
    predictions = pd.read_parquet(tiny_run / "out/predictions.parquet")
    checked = 0
    for (head, task), rows in predictions.groupby(["head", "task"]):
        chosen = results["validation"]["heads"][head]["test"][task].get("operating_points", {}).get("sens90")
        threshold = chosen and chosen["chosen_on_development"]["threshold"]
        if threshold is None:
            assert rows["decision_sens90"].isna().all()
            continue
        scored = rows[rows["probability"].notna()]
        assert ((scored["probability"] >= threshold).astype(float) == scored["decision_sens90"]).all()
        checked += 1
    assert checked > 0


def test_no_identifier_reaches_any_output(tiny_run):
    import pydicom

    manifest = pd.read_csv(tiny_run / "data/manifest.csv")
    identifiers = set(manifest["patient_id"])
    for path in manifest["cxr_path"].dropna().head(20):
        header = pydicom.dcmread(tiny_run / "data" / path, stop_before_pixels=True)
        identifiers |= {str(header.get(k)) for k in ("PatientName", "PatientID", "AccessionNumber",
                                                      "StudyInstanceUID", "PatientBirthDate") if header.get(k)}
    texts = {p: p.read_text(errors="replace") for p in (tiny_run / "out").glob("*") if p.suffix in
             (".json", ".html", ".yaml", ".csv")}  # private/ holds the linkage: it is not an output to share
    assert (tiny_run / "out/private").stat().st_mode & 0o077 == 0
    for p in (tiny_run / "out").glob("*.parquet"):
        texts[p] = pd.read_parquet(p).astype(str).to_csv()
    assert {"results.json", "report.html", "predictions.parquet", "case_search.parquet"} <= {p.name for p in texts}
    for p, text in texts.items():
        found = [i for i in identifiers if i in text]
        assert not found, f"{p.name} holds {found[:3]}"


def test_validate_runs_a_plan_on_the_trained_model_with_the_same_numbers(tiny_run, capsys):
    plan = (REPO / "evaluation/plans/demo.yaml").read_text()
    (tiny_run / "plan.yaml").write_text(plan.replace("prompts: ../../configs", f"prompts: {REPO}/configs"))
    out = tiny_run / "validate"
    assert main(["validate", str(tiny_run / "plan.yaml"), "--pipeline", str(tiny_run / "pipeline.yaml"),
                 "--out", str(out)]) == 0
    assert "report:" in capsys.readouterr().out and (out / "report.pdf").is_file()
    ran = json.loads((tiny_run / "out/results.json").read_text())["validation"]
    validated = json.loads((out / "results.json").read_text())["validation"]
    assert validated["heads"] == ran["heads"] and validated["cross_source"] == ran["cross_source"]

    pinned = tiny_run / "pinned.yaml"
    pinned.write_text((tiny_run / "plan.yaml").read_text() + f"checkpoint_sha256: {'ab' * 32}\n")
    assert main(["validate", str(pinned), "--pipeline", str(tiny_run / "pipeline.yaml"), "--out", str(out)]) == 2
    assert "is not the" in capsys.readouterr().err
    assert main(["validate", str(tiny_run / "plan.yaml")]) == 2  # neither --pipeline nor the plan's pipeline key
    assert "no pipeline" in capsys.readouterr().err
