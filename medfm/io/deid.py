"""De-identification of DICOM instances: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

:func:`deidentify` applies Table E.1-1 (:mod:`medfm.io.deid_profile`) to a dataset, recursively into
every sequence item, and returns a new dataset. On top of the table, as the profile's text requires:
every private attribute is removed (Retain Safe Private is an option medfm does not take), curves
(groups 50xx) and overlays (groups 60xx) are removed whole, and the result says what was done
(Patient Identity Removed, De-identification Method and its Code Sequence, Longitudinal Temporal
Information Modified). Instances flagged BurnedInAnnotation YES are refused: the profile does not
clean pixel data, so such an image must not be used unless someone has checked its pixels.

Everything that must stay consistent across instances is keyed by the cohort's secret
(:class:`DeidKey`, an HMAC-SHA256 key kept in a 0600 file, never in outputs):

- UIDs become ``2.25.<128-bit integer>`` from the HMAC of the original UID, so one original UID
  always maps to one new UID wherever it occurs (SeriesInstanceUID in every slice, a
  ReferencedSOPInstanceUID inside a sequence, the file meta MediaStorageSOPInstanceUID). Every
  instance UID is remapped, listed in the table or not; class and transfer syntax UIDs and UIDs under
  the DICOM root (1.2.840.10008) name kinds of things, not patients, and are kept.
- PatientID and PatientName become the same pseudonym, ``mf-`` + 16 hex digits of the HMAC of the
  PatientID: one patient stays one patient, and a different key gives unlinkable pseudonyms.
- With :attr:`DeidOption.RETAIN_MODIFIED_DATES`, every date of a patient moves back by the same keyed
  number of whole days (1 to 3650), so intervals and order are kept; times stay as they are.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from medfm.errors import MedfmError
from medfm.io.deid_profile import EDITION, NOT_MODIFIED_DATES, PATIENT_CHARACTERISTICS, TIMEZONE_OFFSET, basic_action


class DeidError(MedfmError):
    """A DICOM instance was not de-identified, or the de-identification key cannot be used."""


class BurnedInAnnotationError(DeidError):
    """An instance says BurnedInAnnotation YES: text in its pixels may identify the patient."""


class DeidKeyError(DeidError):
    """The de-identification key file is missing, malformed, or readable by others."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DeidOption(StrEnum):
    """PS3.15 E.3 options medfm implements on top of the Basic Profile."""

    RETAIN_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"


# CID 7050 "De-identification Method" codes (scheme DCM), listed in DeidentificationMethodCodeSequence.
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
OPTION_CODES = {
    DeidOption.RETAIN_MODIFIED_DATES: ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    DeidOption.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
}
METHOD = f"medfm basic profile, PS3.15 Annex E {EDITION}"  # DeidentificationMethod, LO (64 characters at most)
MAX_DATE_SHIFT_DAYS = 3650
KEY_FILE = "deid.key"

# A combined code chooses by the attribute's type in the IOD, which a generic de-identifier cannot know
# for every SOP class. Replacing (Z, D) is conformant whatever the type and carries no information, so it
# is chosen over removing: no reader loses a Type 1 or Type 2 attribute it needs.
_COMBINED = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}
_DATE_VRS = frozenset({"DA", "DT", "TM"})
_NUMERIC_VRS = frozenset({"AT", "FD", "FL", "SL", "SS", "SV", "UL", "US", "UV"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DUMMIES = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000Y", "DS": "0", "IS": "0",
            "UR": "urn:x-medfm:anonymized"}
_DUMMY_TEXT = "ANONYMIZED"
_DICOM_ROOT = "1.2.840.10008."
_KEPT_UID_KEYWORDS = frozenset({"CodingSchemeUID", "ContextUID", "MappingResourceUID"})


@dataclass(frozen=True)
class DeidKey:
    """The cohort's secret: every pseudonym, new UID and date shift is an HMAC-SHA256 under it.

    The same key gives the same outputs for the same inputs (re-ingesting is consistent); another key
    gives outputs that cannot be linked to these. Losing it means new pseudonyms for the same patients.
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("a de-identification key needs at least 16 bytes")

    @classmethod
    def generate(cls) -> DeidKey:
        return cls(secrets.token_bytes(32))

    def _digest(self, purpose: str, value: str) -> bytes:
        # The purpose separates the uses: a patient id and a UID with the same text do not collide.
        return hmac.new(self.secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The new UID for ``original``: ``2.25.`` + a 128-bit integer laid out as an RFC 9562 version-8 UUID."""
        n = int.from_bytes(self._digest("uid", original.strip().rstrip("\0")), "big") >> 128
        n = (n & ~(0xF << 76)) | (0x8 << 76)  # version 8: custom (hash-based) UUID
        n = (n & ~(0x3 << 62)) | (0x2 << 62)  # variant 10 (RFC 9562)
        return f"2.25.{n}"

    def patient_pseudonym(self, patient_id: str) -> str:
        """What PatientID and PatientName become: ``mf-`` + 16 hex digits."""
        return "mf-" + self._digest("patient", patient_id.strip()).hex()[:16]

    def site_pseudonym(self, institution: str) -> str:
        """A stable name for an institution that does not reveal it: ``site-`` + 8 hex digits."""
        return "site-" + self._digest("site", " ".join(institution.split())).hex()[:8]

    def date_shift_days(self, patient_id: str) -> int:
        """Days every date of this patient moves by, 1 to :data:`MAX_DATE_SHIFT_DAYS` back."""
        draw = int.from_bytes(self._digest("date-shift", patient_id.strip())[:8], "big")
        return -(1 + draw % MAX_DATE_SHIFT_DAYS)


def load_or_create_key(path: str | Path) -> DeidKey:
    """The key stored at ``path``; created first (a 0600 file, its folder 0700 if new) when missing.

    Raises:
        DeidKeyError: the file is readable or writable by group or others, or is not a key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(DeidKey.generate().secret.hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, path)  # atomic, and never replaces a key another run created meanwhile
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    return load_key(path)


def load_key(path: str | Path) -> DeidKey:
    """The key stored at ``path`` (64 hex digits, owner-only permissions).

    Raises:
        DeidKeyError: missing, readable or writable by group or others, or not a key.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise DeidKeyError(path, "no de-identification key here") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DeidKeyError(path, f"cannot read the de-identification key ({type(err).__name__})") from None
    if mode & 0o077:
        raise DeidKeyError(path, f"the de-identification key is open to group or others (mode {mode & 0o777:o}); "
                                 "restrict it to its owner: chmod 600")
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise DeidKeyError(path, "not a medfm de-identification key (64 hex digits)")
    return DeidKey(bytes.fromhex(text))


@dataclass(frozen=True)
class _Context:
    key: DeidKey
    options: frozenset[DeidOption]
    shift_days: int


def deidentify(dataset: Dataset, key: DeidKey, *, options: Iterable[DeidOption] = (),
               allow_burned_in: bool = False) -> Dataset:
    """A de-identified copy of ``dataset``: Basic Profile, private and curve/overlay groups removed, UIDs remapped.

    The input is left as it was (a caller can still check the original against its source); bulk
    values such as pixel data are shared with it, not copied, so a copy costs no pixel memory.

    Args:
        dataset: one DICOM instance, with or without file meta.
        key: the cohort's key; the same key maps the same UIDs and patients the same way.
        options: :class:`DeidOption` values applied on top of the Basic Profile.
        allow_burned_in: de-identify an instance flagged BurnedInAnnotation YES anyway; its pixels are
            not cleaned, so whoever sets this has checked them.

    Returns:
        The de-identified dataset; its file meta (if the input had one) names the new SOPInstanceUID.

    Raises:
        BurnedInAnnotationError: BurnedInAnnotation is YES and ``allow_burned_in`` is False.
    """
    options = frozenset(DeidOption(o) for o in options)
    if not allow_burned_in and str(dataset.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        instance = key.uid(str(dataset.get("SOPInstanceUID", "")))
        raise BurnedInAnnotationError(
            f"instance {instance}: BurnedInAnnotation is YES: text burned into the pixels may identify the "
            "patient and the Basic Profile does not clean pixel data, so the instance is refused "
            "(allow_burned_in=True keeps it, pixels unchanged, once someone has checked them)")
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    context = _Context(key, options, key.date_shift_days(patient_id))
    out = _clean(dataset, context)
    _record_method(out, key, patient_id, options)
    if getattr(dataset, "file_meta", None) is not None:
        out.file_meta = _file_meta(dataset.file_meta, out)
    implicit_vr, little_endian = dataset.original_encoding
    out.set_original_encoding(implicit_vr, little_endian, dataset.original_character_set)
    return out


def action_for(tag: int, vr: str, options: frozenset[DeidOption] = frozenset()) -> str | None:
    """What :func:`deidentify` does to a listed attribute: X, Z, D, U, U* (UIDs inside), K or C (dates shifted).

    None for attributes the table does not list (kept, except UIDs, private and curve/overlay groups).
    """
    action = basic_action(tag)
    if action is None:
        return None
    if DeidOption.RETAIN_PATIENT_CHARACTERISTICS in options and tag in PATIENT_CHARACTERISTICS:
        return "K"
    if DeidOption.RETAIN_MODIFIED_DATES in options and (
            tag == TIMEZONE_OFFSET or (vr in _DATE_VRS and tag not in NOT_MODIFIED_DATES)):
        return "C"
    return _COMBINED.get(action, action)


def _clean(dataset: Dataset, context: _Context) -> Dataset:
    out = Dataset()
    for element in dataset:
        tag = element.tag
        if tag.is_private or tag.group <= 0x0002 or tag.element == 0 or _curve_or_overlay(tag):
            continue  # private; command or file meta groups (never in a dataset); group lengths
        action = action_for(tag, element.VR, context.options)
        if action != "X":
            out.add(_replacement(element, action, context))
    return out


def _curve_or_overlay(tag: BaseTag) -> bool:
    return 0x5000 <= tag.group <= 0x50FF or 0x6000 <= tag.group <= 0x60FF


def _replacement(element: DataElement, action: str | None, context: _Context) -> DataElement:
    tag, vr = element.tag, element.VR
    if action == "Z":
        return DataElement(tag, vr, Sequence() if vr == "SQ" else empty_value_for_VR(vr))
    if vr == "SQ" and action == "D":  # the items keep their structure, every value in them becomes a dummy
        return DataElement(tag, vr, Sequence([_dummy_item(item, context) for item in element.value]))
    if vr == "SQ":  # K, U*, or not in the table: the items are de-identified by the same rules
        return DataElement(tag, vr, Sequence([_clean(item, context) for item in element.value]))
    if action in ("U", "U*") or (vr == "UI" and (action == "D" or (action is None and not _kept_uid(tag)))):
        return _remapped(element, context.key)
    if action == "D":
        return DataElement(tag, vr, _dummy(vr))
    if action == "C" and vr in ("DA", "DT"):
        return DataElement(tag, vr, _shifted(element.value, vr, context.shift_days))
    return copy.deepcopy(element)  # K, C of a time, or not in the table (bytes are shared, not copied)


def _dummy_item(item: Dataset, context: _Context) -> Dataset:
    """An item of a sequence the table replaces (D): same attributes, no information in their values.

    A person's identification code, an SR content tree or a graphic annotation carries identity in
    values the table does not list (a Code Meaning can be a name), so none of them is kept.
    """
    out = Dataset()
    for element in item:
        tag, vr = element.tag, element.VR
        if tag.is_private or tag.element == 0 or _curve_or_overlay(tag):
            continue
        if vr == "SQ":
            out.add(DataElement(tag, vr, Sequence([_dummy_item(inner, context) for inner in element.value])))
        elif vr == "UI":
            out.add(copy.deepcopy(element) if _kept_uid(tag) else _remapped(element, context.key))
        else:
            out.add(DataElement(tag, vr, _dummy(vr)))
    return out


def _kept_uid(tag: BaseTag) -> bool:
    keyword = keyword_for_tag(tag)
    return keyword.endswith(("ClassUID", "SyntaxUID")) or keyword in _KEPT_UID_KEYWORDS


def _remapped(element: DataElement, key: DeidKey) -> DataElement:
    def new(value: object) -> str:
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        text = text.strip().rstrip("\0")
        return text if not text or text.startswith(_DICOM_ROOT) else key.uid(text)

    value = element.value
    if element.VM > 1:
        value = [new(v) for v in value]
    elif value is not None and value != "":
        value = new(value)
    return DataElement(element.tag, "UI", value)


def _dummy(vr: str) -> object:
    if vr in _NUMERIC_VRS:
        return 0
    if vr in _BINARY_VRS:
        return bytes(8)
    return _DUMMIES.get(vr, _DUMMY_TEXT)


def _shifted(value: object, vr: str, days: int) -> object:
    if value is None or value == "":
        return value
    if isinstance(value, str) or not isinstance(value, Iterable):
        return _shift_one(str(value), vr, days)
    return [_shift_one(str(v), vr, days) for v in value]


def _shift_one(text: str, vr: str, days: int) -> str:
    """A DA (``YYYYMMDD``) or DT (``YYYYMMDD...``) value moved by ``days``; empty when it has no full date."""
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})(.*)", text.strip())
    if match is None or (vr == "DA" and match.group(4)):
        return ""
    try:
        day = dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3))) + dt.timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}{match.group(4)}"


def _record_method(out: Dataset, key: DeidKey, patient_id: str, options: frozenset[DeidOption]) -> None:
    """Pseudonymous patient identity, and the attributes PS3.15 E.1 requires to say what was done."""
    pseudonym = key.patient_pseudonym(patient_id) if patient_id else ""
    out.PatientID = pseudonym
    out.PatientName = pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    codes = [BASIC_PROFILE_CODE, *(OPTION_CODES[o] for o in DeidOption if o in options)]
    out.DeidentificationMethodCodeSequence = Sequence([_code(value, meaning) for value, meaning in codes])
    modified = DeidOption.RETAIN_MODIFIED_DATES in options
    out.LongitudinalTemporalInformationModified = "MODIFIED" if modified else "REMOVED"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item


def _file_meta(meta: FileMetaDataset, out: Dataset) -> FileMetaDataset:
    """File meta naming the new instance; source AE titles and private meta information are left behind."""
    new = FileMetaDataset()
    sop_class = meta.get("MediaStorageSOPClassUID") or out.get("SOPClassUID")
    if sop_class:
        new.MediaStorageSOPClassUID = sop_class
    if out.get("SOPInstanceUID"):
        new.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    if meta.get("TransferSyntaxUID"):
        new.TransferSyntaxUID = meta.TransferSyntaxUID
    return new
