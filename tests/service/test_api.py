"""The search API through FastAPI's TestClient, on the shared indexed cohort."""

from __future__ import annotations

import io
import logging
import re
import tempfile
import zipfile
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from medfm.errors import MedfmError
from medfm.heads.cases import patient_key
from medfm.service import ServiceSettings, create_app, serve
from medfm.service.app import STATIC, is_loopback
from medfm.service.security import PathOnlyAccessLog, uvicorn_log_config
from tests.service.conftest import TOKEN

SECURITY_HEADERS = {"content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy"}


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(client: TestClient, name: str, data: bytes, **form):
    return client.post("/api/search", files={"file": (name, data)}, data={k: str(v) for k, v in form.items()})


# -- access ----------------------------------------------------------------------------------------


def test_health_needs_no_token_and_every_response_has_security_headers(client):
    response = client.get("/api/health", headers={"Authorization": ""})
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert SECURITY_HEADERS <= set(response.headers)
    assert "default-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert SECURITY_HEADERS <= set(client.get("/").headers)


@pytest.mark.parametrize("headers", [{"Authorization": ""}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}])
@pytest.mark.parametrize(("method", "path"), [("get", "/api/version"), ("get", "/api/cases/0"),
                                              ("get", "/api/cases/0/thumbnail"), ("post", "/api/search")])
def test_without_the_right_token_401(client, headers, method, path):
    kwargs = {"data": {"text": "effusion"}} if method == "post" else {}
    response = getattr(client, method)(path, headers=headers, **kwargs)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_token_in_the_query_string_is_not_accepted(client):
    assert client.get(f"/api/version?token={TOKEN}", headers={"Authorization": ""}).status_code == 401


def test_version(client, case_search):
    body = client.get("/api/version").json()
    assert body["cases"] == len(case_search.index)
    assert case_search.index.info["model_sha256"].startswith(body["model"]) and len(body["model"]) == 12
    assert "cxr" in body["case_modalities"] and "report" in body["query_modalities"]


def test_access_log_shows_the_path_without_its_query_string():
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", "/api/version?token=secret", "1.1", 401), None)
    assert PathOnlyAccessLog().filter(record)
    assert "secret" not in record.getMessage() and "/api/version" in record.getMessage()
    assert uvicorn_log_config()["handlers"]["access"]["filters"] == ["path_only"]


def test_serve_refuses_other_hosts_without_a_token(indexed_cohort):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    with pytest.raises(MedfmError, match="without an access token"):
        serve(indexed_cohort.index, host="0.0.0.0", token=None)


# -- searching -------------------------------------------------------------------------------------


def assert_results(body: dict, kind: str, modality: str, k: int) -> None:
    assert body["query"] == {"kind": kind, "modality": modality}
    assert 0 < len(body["results"]) <= k
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for hit in body["results"]:
        assert "patient_key" not in hit
        assert {"id", "study_id", "modality", "excerpt", "finding_labels", "thumbnail_url"} <= set(hit)
        assert hit["thumbnail_url"] == f"/api/cases/{hit['id']}/thumbnail"


def test_search_by_text(client):
    response = client.post("/api/search", data={"text": "small left pleural effusion", "k": "5"})
    assert response.status_code == 200, response.text
    assert_results(response.json(), "text", "report", 5)


def test_search_by_dicom_leaves_out_the_query_patient_and_never_returns_identifiers(client, case_search, studies):
    data = studies["cxr"].read_bytes()
    header = pydicom.dcmread(studies["cxr"], stop_before_pixels=True)
    own = patient_key(case_search.index.info["patient_salt"], str(header.PatientID))
    response = upload(client, "P-name.dcm", data, k=100)
    assert response.status_code == 200, response.text
    body = response.json()
    assert_results(body, "file", "cxr", 100)
    assert all(case_search.index.case(hit["id"]).patient_key != own for hit in body["results"])
    with_own = upload(client, "scan.dcm", data, k=100, include_own_patient="true")
    assert any(case_search.index.case(hit["id"]).patient_key == own for hit in with_own.json()["results"])
    responses = [response, with_own, *(client.get(f"/api/cases/{hit['id']}") for hit in with_own.json()["results"])]
    identifiers = [str(header.PatientName), str(header.PatientID), str(header.PatientBirthDate)]
    assert all(identifiers)
    for answer in responses:
        for identifier in identifiers:
            assert identifier not in answer.text


def test_search_by_zip_of_a_ct_series(client, studies):
    slices = {f"series/{p.name}": p.read_bytes() for p in sorted(studies["ct"].iterdir())}
    response = upload(client, "ct.zip", zipped(slices), k=3)
    assert response.status_code == 200, response.text
    assert_results(response.json(), "file", "ct", 3)


def test_search_by_zip_of_a_wfdb_record(client, studies):
    record = studies["ecg"]
    files = {record.name + suffix: record.with_suffix(suffix).read_bytes() for suffix in (".hea", ".dat")}
    response = upload(client, "ecg.zip", zipped(files), k=3)
    assert response.status_code == 200, response.text
    assert_results(response.json(), "file", "ecg", 3)


def test_search_by_png_with_and_without_a_modality_hint(client, studies):
    data = studies["fundus_png"].read_bytes()
    assert upload(client, "photo.png", data).json()["query"]["modality"] == "fundus"
    assert upload(client, "photo.png", data, modality="fundus").json()["query"]["modality"] == "fundus"
    refused = upload(client, "photo.png", data, modality="cxr")  # a colour photograph is no radiograph
    assert refused.status_code == 422 and "colour" in refused.json()["detail"]


def test_filters(client, case_search):
    def results(**form):
        response = client.post("/api/search", data={"text": "cardiomegaly", "k": "100", **form})
        assert response.status_code == 200, response.text
        return response.json()["results"]

    assert {hit["modality"] for hit in results(filter_modality="ecg")} == {"ecg"}
    assert {hit["site"] for hit in results(site="site_a")} == {"site_a"}
    dated = results(date_from="2019-01-01", date_to="2020-12-31")
    assert dated and all("2019-01-01" <= hit["date"] <= "2020-12-31" for hit in dated)
    assert results(site="nowhere") == []
    assert len(results(k="3")) == 3
    assert len(results()) == len(case_search.index)


@pytest.mark.parametrize("form", [{"k": "0"}, {"k": "101"}, {"filter_modality": "xray"},
                                  {"date_from": "last week"}, {"modality": "report"}, {"text": ""},
                                  {"text": "x" * 2001}])
def test_bad_search_forms_422(client, form):
    assert client.post("/api/search", data={"text": "effusion", **form}).status_code == 422


def test_file_and_text_together_422(client, studies):
    response = upload(client, "scan.dcm", studies["cxr"].read_bytes(), text="effusion")
    assert response.status_code == 422


# -- uploads ---------------------------------------------------------------------------------------


def test_upload_over_the_size_cap_413(case_search, studies):
    with TestClient(create_app(case_search, ServiceSettings(token=TOKEN, max_upload_bytes=1000)),
                    headers={"Authorization": f"Bearer {TOKEN}"}) as small:
        # over the request limit (cap + form overhead): refused from Content-Length, before it is read
        assert upload(small, "scan.dcm", studies["cxr"].read_bytes()).status_code == 413
        # under the request limit, over the file cap: refused while the file is copied
        response = upload(small, "scan.dcm", b"\0" * 5000)
        assert response.status_code == 413 and "1000 bytes" in response.json()["detail"]
        assert upload(small, "note.dcm", b"\0" * 10).status_code == 422  # under the cap: read, and refused


def test_unreadable_upload_422_names_the_upload_not_the_server_path(client):
    for name, data, shown in [("x.dcm", b"not a dicom file" * 20, "upload.dcm"),
                              ("x.png", b"\x89PNG\r\n\x1a\n" + b"broken" * 20, "upload.png"),
                              ("x.zip", zipped({"a.txt": b"one", "b/c.txt": b"two"}), "upload.zip")]:
        response = upload(client, name, data)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail.startswith(shown), detail
        assert tempfile.gettempdir() not in detail and "medfm-upload" not in detail and "medfm-query" not in detail


def test_zip_expanding_past_the_unpacked_cap_422(case_search):
    settings = ServiceSettings(token=TOKEN, max_unpacked_bytes=1 << 20)
    with TestClient(create_app(case_search, settings), headers={"Authorization": f"Bearer {TOKEN}"}) as small:
        response = upload(small, "bomb.zip", zipped({"zeros.dcm": b"\0" * (8 << 20)}))
    assert response.status_code == 422 and "expands to" in response.json()["detail"]


def test_zip_member_climbing_out_422(client):
    response = upload(client, "evil.zip", zipped({"../../escaped.dcm": b"x" * 200}))
    assert response.status_code == 422
    assert "outside" in response.json()["detail"]
    assert not (Path(tempfile.gettempdir()) / "escaped.dcm").exists()


def test_upload_file_name_is_never_a_path(client, studies, tmp_path):
    target = tmp_path / "planted.dcm"
    for name in (str(target), "../../../../" + str(target), "..\\..\\planted.dcm"):
        assert upload(client, name, studies["cxr"].read_bytes()).status_code == 200
    assert not target.exists()


# -- cases -----------------------------------------------------------------------------------------


def test_case_has_its_full_report_and_a_png_thumbnail(client, case_search):
    case = case_search.index.case(0)
    body = client.get("/api/cases/0").json()
    assert body["report"] == case.report and body["study_id"] == case.study_id
    assert "patient_key" not in body and "score" not in body
    thumbnail = client.get(body["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/png"
    assert thumbnail.content.startswith(b"\x89PNG")


TRAVERSALS = ["/api/cases/100000", "/api/cases/-1", "/api/cases/1e3", "/api/cases/99999999999999999999",
              "/api/cases/..%2F..%2Fetc%2Fpasswd", "/api/cases/..%2F..%2Fetc%2Fpasswd/thumbnail",
              "/api/cases/%2e%2e/thumbnail", "/api/cases/0%2F..%2F..%2Fcases.sqlite/thumbnail",
              "/api/cases/100000/thumbnail", "/static/..%2F..%2Fheads%2Fquery.py", "/static/%2e%2e/app.py",
              "/static/..%2Fapp.py"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_paths_outside_the_api_404_or_422(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422), (path, response.status_code)
    assert "import" not in response.text and "SQLite" not in response.text


# -- the page --------------------------------------------------------------------------------------


def test_page_and_static_files_load_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js" defer></script>' in page.text
    for path in sorted(STATIC.iterdir()):
        text = path.read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name  # an XML namespace loads nothing
        if path.suffix == ".html":
            assert "<script>" not in text and "style=" not in text and "onclick" not in text, path.name
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")


def test_openapi_lists_the_endpoints(client):
    assert client.get("/api/docs").status_code == 200
    paths = client.get("/api/openapi.json", headers={"Authorization": ""}).json()["paths"]
    assert {"/api/health", "/api/version", "/api/search", "/api/cases/{case_id}",
            "/api/cases/{case_id}/thumbnail"} <= set(paths)


# -- hostile headers: small uploads that claim a geometry whose preprocessing would take gigabytes --------


def grey_png(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\0" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_a_photo_whose_padded_square_would_take_gigabytes_422(client):
    response = upload(client, "strip.png", grey_png(10_000, 2), modality="fundus")  # padded: 10000^2 x 3 floats
    assert response.status_code == 422 and "MiB one study may use" in response.json()["detail"]


def test_a_ct_series_claiming_huge_pixels_422(client, studies):
    slices = {}
    for path in sorted(studies["ct"].iterdir()):
        header = pydicom.dcmread(path)
        header.PixelSpacing = [400, 400]  # 0.4 m pixels: resampled to the model's grid, over a GiB
        buffer = io.BytesIO()
        header.save_as(buffer)
        slices[f"series/{path.name}"] = buffer.getvalue()
    response = upload(client, "ct.zip", zipped(slices))
    assert response.status_code == 422 and "MiB one study may use" in response.json()["detail"]


def test_an_ecg_claiming_a_tiny_sampling_rate_422(client, studies):
    record = studies["ecg"]
    header = record.with_suffix(".hea").read_text().splitlines()
    fields = header[0].split()
    fields[2] = "0.025"  # resampled to the model's rate: 2000x the samples
    files = {record.name + ".hea": "\n".join([" ".join(fields), *header[1:]]).encode() + b"\n",
             record.name + ".dat": record.with_suffix(".dat").read_bytes()}
    response = upload(client, "ecg.zip", zipped(files))
    assert response.status_code == 422 and "MiB one study may use" in response.json()["detail"]


def test_a_zip_inside_the_zip_422(client, studies):
    inner = zipped({"scan.dcm": studies["cxr"].read_bytes()})
    response = upload(client, "nested.zip", zipped({"inner.zip": inner}))
    assert response.status_code == 422 and "another zip" in response.json()["detail"]
