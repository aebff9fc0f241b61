"""Free-text reports written from a visit's ground truth: chest radiograph, ECG,
macular OCT, colour fundus photograph and chest CT.

Phrasing varies (several templates per statement, shuffled filler) so a text
encoder cannot key on one sentence. Negatives are always stated with a
negation; borderline positives (low severity) are hedged ("possible",
"probable", "cannot exclude"), so hedged statements always mean label 1.
"""

from __future__ import annotations

import numpy as np

# Severity cut-offs for wording; sampling ranges live in cohort.py.
CTR_BORDERLINE = 0.57  # cardiomegaly positives below this are hedged
CTR_MODERATE = 0.62
CTR_MARKED = 0.66
EFFUSION_BORDERLINE = 0.14  # fraction of lung height
EFFUSION_MODERATE = 0.24
LVH_BORDERLINE = 1.95  # QRS voltage factor

_HEART_NORMAL = (
    "Heart size is normal.",
    "No cardiomegaly.",
    "The cardiac silhouette is within normal limits.",
    "The heart is not enlarged.",
    "Normal cardiomediastinal silhouette.",
)
_HEART_BORDERLINE = (
    "Possible cardiomegaly.",
    "The heart size is borderline; possible mild cardiomegaly.",
    "Borderline enlargement of the cardiac silhouette.",
    "The cardiac silhouette is at the upper limit of normal, possibly mildly enlarged.",
)
_HEART_ENLARGED = (
    "The heart is {deg} enlarged.",
    "{Deg} cardiomegaly.",
    "{Deg} enlargement of the cardiac silhouette.",
    "The cardiac silhouette is {deg} enlarged.",
)
_HEART_DEGREE = {"mild": ("mild", "mildly"), "moderate": ("moderate", "moderately"),
                 "marked": ("marked", "markedly")}

_EFFUSION_NONE = (
    "No pleural effusion.",
    "The costophrenic angles are sharp.",
    "No pleural effusion is seen.",
    "There is no pleural effusion.",
)
_EFFUSION_BORDERLINE = (
    "Probable small {side} pleural {effusion}.",
    "Cannot exclude trace {side} pleural {effusion}.",
    "Possible small {side} {effusion} with minimal blunting of the costophrenic {angle}.",
)
_EFFUSION_ONE = (
    "{Size} {side} pleural effusion.",
    "There is a {size} {side} pleural effusion.",
    "{Size} {side} pleural effusion blunting the costophrenic angle.",
)
_EFFUSION_BOTH = (
    "{Size} bilateral pleural effusions.",
    "Bilateral pleural effusions with blunting of the costophrenic angles.",
    "There are {size} bilateral pleural effusions.",
)
_CXR_FILLER = (
    ("No pneumothorax.", "There is no pneumothorax."),
    ("No focal consolidation.", "No focal airspace consolidation."),
    ("The osseous structures are intact.", "No acute osseous abnormality."),
)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _heart_sentence(rng: np.random.Generator, cardiomegaly: int, ctr: float) -> tuple[str, str]:
    """Returns (findings sentence, impression phrase or '')."""
    if not cardiomegaly:
        return _pick(rng, _HEART_NORMAL), ""
    if ctr < CTR_BORDERLINE:
        return _pick(rng, _HEART_BORDERLINE), "Possible mild cardiomegaly"
    deg = "marked" if ctr >= CTR_MARKED else "moderate" if ctr >= CTR_MODERATE else "mild"
    noun, adverb = _HEART_DEGREE[deg]
    text = _pick(rng, _HEART_ENLARGED).format(deg=adverb, Deg=noun.capitalize())
    return text, f"{noun.capitalize()} cardiomegaly"


def _effusion_sentence(rng: np.random.Generator, effusion: int, height: float, side: str) -> tuple[str, str]:
    if not effusion:
        return _pick(rng, _EFFUSION_NONE), ""
    both = side == "bilateral"
    effusion, angle = ("effusions", "angles") if both else ("effusion", "angle")
    if height < EFFUSION_BORDERLINE:
        text = _pick(rng, _EFFUSION_BORDERLINE).format(side=side, effusion=effusion, angle=angle)
        return text, f"probable small {side} pleural {effusion}"
    size = "moderate" if height >= EFFUSION_MODERATE else "small"
    text = _pick(rng, _EFFUSION_BOTH if both else _EFFUSION_ONE).format(
        size=size, Size=size.capitalize(), side=side)
    return text, f"{size} {side} pleural {effusion}"


def radiology_report(
    rng: np.random.Generator, *, cardiomegaly: int, ctr: float,
    pleural_effusion: int, effusion_height: float, effusion_side: str,
) -> str:
    """Writes a PA chest radiograph report.

    Args:
        rng: per-visit generator (template choice and sentence order).
        cardiomegaly: label; ``ctr`` grades it.
        ctr: cardiothoracic ratio.
        pleural_effusion: label; ``effusion_height`` grades it.
        effusion_height: fluid height as a fraction of lung height.
        effusion_side: ``left``, ``right`` or ``bilateral`` (patient's side).

    Returns:
        The report text, UTF-8-safe, one section per paragraph.
    """
    heart, heart_imp = _heart_sentence(rng, cardiomegaly, ctr)
    fluid, fluid_imp = _effusion_sentence(rng, pleural_effusion, effusion_height, effusion_side)
    filler = [_pick(rng, group) for group in _CXR_FILLER if rng.random() < 0.8]
    sentences = [heart, fluid, *filler]
    order = rng.permutation(len(sentences))
    findings = " ".join(sentences[i] for i in order)
    positives = [p for p in (heart_imp, fluid_imp) if p]
    if positives:
        text = " and ".join(positives)
        impression = text[0].upper() + text[1:] + "."
    else:
        impression = _pick(rng, ("No acute cardiopulmonary process.",
                                 "No acute cardiopulmonary abnormality.",
                                 "Normal chest radiograph."))
    return (f"EXAMINATION: Chest radiograph, PA view.\n\nFINDINGS: {findings}\n\n"
            f"IMPRESSION: {impression}\n")


def _rhythm_sentence(rng: np.random.Generator, af: int, rate: int) -> str:
    if af:
        response = "rapid" if rate > 100 else "controlled"
        return _pick(rng, (
            f"Atrial fibrillation with {response} ventricular response, rate {rate} bpm.",
            f"Irregularly irregular rhythm without discernible P waves, consistent with "
            f"atrial fibrillation. Ventricular rate {rate} bpm.",
            f"Atrial fibrillation, ventricular rate {rate} bpm.",
        ))
    name = "Sinus bradycardia" if rate < 60 else "Normal sinus rhythm"
    return _pick(rng, (
        f"{name}, rate {rate} bpm.",
        f"{name} at {rate} bpm with normal PR interval.",
        f"{name}. Ventricular rate {rate} bpm.",
    ))


def cardiology_report(
    rng: np.random.Generator, *, rate_bpm: float, atrial_fibrillation: int,
    lvh: int, lvh_factor: float, strain: bool,
) -> str:
    """Writes a 12-lead ECG interpretation.

    Args:
        rng: per-visit generator.
        rate_bpm: the ventricular rate actually present in the record.
        atrial_fibrillation: label.
        lvh: label; ``lvh_factor`` grades it.
        lvh_factor: QRS voltage multiplier.
        strain: lateral T-wave inversion is present.

    Returns:
        The report text.
    """
    rate = int(round(rate_bpm))
    rhythm = _rhythm_sentence(rng, atrial_fibrillation, rate)
    if not lvh:
        voltage = _pick(rng, ("Normal QRS voltage.", "No evidence of LVH.",
                              "No voltage criteria for left ventricular hypertrophy."))
    elif lvh_factor < LVH_BORDERLINE:
        voltage = _pick(rng, ("Borderline voltage criteria, possible LVH.",
                              "Possible left ventricular hypertrophy by voltage."))
    elif strain:
        voltage = _pick(rng, ("LVH with repolarization abnormality.",
                              "Left ventricular hypertrophy with lateral T-wave inversion (strain pattern)."))
    else:
        voltage = _pick(rng, ("Voltage criteria for left ventricular hypertrophy.",
                              "Left ventricular hypertrophy by voltage criteria.",
                              "Increased QRS voltage consistent with LVH."))
    filler = [_pick(rng, ("Normal axis.", "QRS axis within normal limits."))]
    if not strain:
        filler.append(_pick(rng, ("No acute ST changes.", "No ST-segment elevation or depression.")))
    abnormal = atrial_fibrillation or lvh
    if abnormal:
        summary = "Abnormal ECG."
    else:
        summary = "Otherwise normal ECG." if rate < 60 else _pick(rng, ("Normal ECG.", "Within normal limits."))
    parts = [voltage, *filler]
    order = rng.permutation(len(parts))
    interpretation = " ".join([*(parts[i] for i in order), summary])
    return f"12-lead ECG.\nRhythm: {rhythm}\nInterpretation: {interpretation}\n"


# ---- eye and chest CT reports ------------------------------------------------------

DRUSEN_BORDERLINE = 0.055  # drusen load (mm of RPE elevation) below which drusen are hedged
DRUSEN_LARGE = 0.08
NODULE_BORDERLINE_MM = 6.0  # nodules smaller than this are hedged

_EYE_NAME = {"R": "right eye", "L": "left eye"}
_DRUSEN_NONE = (
    "No drusen.",
    "The RPE contour is smooth, without drusen.",
    "No RPE elevations to suggest drusen.",
)
_DRUSEN_FUNDUS_NONE = (
    "No drusen.",
    "No drusen are seen at the macula.",
    "The macula is free of drusen.",
)
_DRUSEN_BORDERLINE = (
    "Possible small drusen.",
    "Subtle RPE irregularity, possibly small drusen.",
    "Cannot exclude a few small drusen.",
)
_DRUSEN_OCT = (
    "Multiple {size} drusen elevating the RPE.",
    "{Size} drusen are present beneath the retina, elevating the RPE.",
    "Several {size} drusen with dome-shaped RPE elevation.",
)
_DRUSEN_FUNDUS = (
    "Multiple {size} yellow drusen at the macula.",
    "{Size} drusen are scattered around the fovea.",
    "Several {size} soft drusen in the macula.",
)
_FLUID_NONE = (
    "No intraretinal fluid.",
    "No intraretinal cysts.",
    "There is no intraretinal fluid.",
)
_FLUID_BORDERLINE = (
    "Possible small intraretinal cyst.",
    "A tiny hyporeflective space; cannot exclude intraretinal fluid.",
)
_FLUID_PRESENT = (
    "Intraretinal fluid with {n} cystoid spaces.",
    "Cystoid intraretinal fluid is present ({n} cysts).",
    "Multiple intraretinal cysts consistent with intraretinal fluid.",
)
_HAEM_NONE = (
    "No retinal haemorrhages.",
    "No haemorrhages are seen.",
    "There are no retinal haemorrhages.",
)
_HAEM_BORDERLINE = (
    "Possible small dot haemorrhage.",
    "A single dark red dot, possibly a small haemorrhage.",
)
_HAEM_PRESENT = (
    "{N} blot and flame haemorrhages in the posterior pole.",
    "Scattered retinal haemorrhages ({n}).",
    "There are {n} intraretinal haemorrhages near the macula.",
)
_OCT_FILLER = (
    ("No subretinal fluid.", "There is no subretinal fluid."),
    ("The vitreoretinal interface is unremarkable.", "No epiretinal membrane."),
)
_FUNDUS_FILLER = (
    ("The optic disc is pink with sharp margins.", "Healthy optic disc, cup-to-disc ratio 0.3."),
    ("Vessels are of normal calibre.", "Normal retinal vasculature."),
)
_NODULE_NONE = (
    "No pulmonary nodules.",
    "No suspicious pulmonary nodule is identified.",
    "The lungs are clear, without nodules.",
)
_NODULE_BORDERLINE = (
    "Tiny {d} mm opacity in the {loc}, possibly a small nodule.",
    "Possible {d} mm nodule in the {loc}.",
)
_NODULE_PRESENT = (
    "{d} mm solid nodule in the {loc}.",
    "There is a {d} mm solid pulmonary nodule in the {loc}.",
    "A solid nodule measuring {d} mm is seen in the {loc}.",
)
_CT_FILLER = (
    ("No pneumothorax.", "There is no pneumothorax."),
    ("The central airways are patent.", "Patent trachea and main bronchi."),
    ("No acute osseous abnormality.", "The osseous structures are intact."),
)
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight")


def _drusen_sentence(rng: np.random.Generator, drusen: int, load: float, fundus: bool) -> tuple[str, str]:
    if not drusen:
        return _pick(rng, _DRUSEN_FUNDUS_NONE if fundus else _DRUSEN_NONE), ""
    if load < DRUSEN_BORDERLINE:
        return _pick(rng, _DRUSEN_BORDERLINE), "possible small drusen"
    size = "large" if load >= DRUSEN_LARGE else "intermediate"
    text = _pick(rng, _DRUSEN_FUNDUS if fundus else _DRUSEN_OCT).format(size=size, Size=size.capitalize())
    return text, f"{size} drusen"


def _assemble(rng: np.random.Generator, header: str, sentences: list[str], positives: list[str],
              normal: tuple[str, ...]) -> str:
    order = rng.permutation(len(sentences))
    findings = " ".join(sentences[i] for i in order)
    if positives:
        text = " and ".join(p for p in positives)
        impression = text[0].upper() + text[1:] + "."
    else:
        impression = _pick(rng, normal)
    return f"EXAMINATION: {header}\n\nFINDINGS: {findings}\n\nIMPRESSION: {impression}\n"


def oct_report(rng: np.random.Generator, *, laterality: str, drusen: int, drusen_load: float,
               intraretinal_fluid: int, n_cysts: int) -> str:
    """Writes a macular OCT report.

    Args:
        rng: per-visit generator.
        laterality: ``R`` or ``L``.
        drusen: label; ``drusen_load`` (RPE elevation scale, mm) grades it.
        drusen_load: drusen height scale in mm.
        intraretinal_fluid: label; a single cyst is hedged.
        n_cysts: number of intraretinal cysts.

    Returns:
        The report text.
    """
    dru, dru_imp = _drusen_sentence(rng, drusen, drusen_load, fundus=False)
    if not intraretinal_fluid:
        fluid, fluid_imp = _pick(rng, _FLUID_NONE), ""
    elif n_cysts <= 1:
        fluid, fluid_imp = _pick(rng, _FLUID_BORDERLINE), "possible intraretinal fluid"
    else:
        fluid, fluid_imp = _pick(rng, _FLUID_PRESENT).format(n=_NUMBERS[n_cysts]), "intraretinal fluid"
    filler = [_pick(rng, group) for group in _OCT_FILLER if rng.random() < 0.8]
    return _assemble(rng, f"OCT macula, {_EYE_NAME[laterality]}.", [dru, fluid, *filler],
                     [p for p in (dru_imp, fluid_imp) if p],
                     ("Normal macular OCT.", "No drusen or intraretinal fluid.", "Normal foveal architecture."))


def fundus_report(rng: np.random.Generator, *, laterality: str, drusen: int, drusen_load: float,
                  haemorrhage: int, n_haemorrhages: int) -> str:
    """Writes a colour fundus photograph report.

    Args:
        rng: per-visit generator.
        laterality: ``R`` or ``L``.
        drusen: label, graded by ``drusen_load`` as in the OCT report.
        drusen_load: drusen height scale in mm.
        haemorrhage: label; a single haemorrhage is hedged.
        n_haemorrhages: number of haemorrhages drawn.

    Returns:
        The report text.
    """
    dru, dru_imp = _drusen_sentence(rng, drusen, drusen_load, fundus=True)
    if not haemorrhage:
        haem, haem_imp = _pick(rng, _HAEM_NONE), ""
    elif n_haemorrhages <= 1:
        haem, haem_imp = _pick(rng, _HAEM_BORDERLINE), "possible retinal haemorrhage"
    else:
        word = _NUMBERS[n_haemorrhages]
        haem, haem_imp = _pick(rng, _HAEM_PRESENT).format(n=word, N=word.capitalize()), "retinal haemorrhages"
    filler = [_pick(rng, group) for group in _FUNDUS_FILLER if rng.random() < 0.8]
    return _assemble(rng, f"Colour fundus photograph, {_EYE_NAME[laterality]}.", [dru, haem, *filler],
                     [p for p in (dru_imp, haem_imp) if p],
                     ("Normal fundus.", "No drusen or haemorrhages.", "Unremarkable fundus photograph."))


def ct_report(rng: np.random.Generator, *, lung_nodule: int, nodule_mm: float, location: str) -> str:
    """Writes a chest CT report.

    Args:
        rng: per-visit generator.
        lung_nodule: label; nodules under 6 mm are hedged.
        nodule_mm: diameter in mm.
        location: lobe, e.g. ``right upper lobe``.

    Returns:
        The report text.
    """
    d = int(round(nodule_mm))
    if not lung_nodule:
        nodule, imp = _pick(rng, _NODULE_NONE), ""
    elif nodule_mm < NODULE_BORDERLINE_MM:
        nodule, imp = _pick(rng, _NODULE_BORDERLINE).format(d=d, loc=location), f"possible {d} mm {location} nodule"
    else:
        nodule, imp = _pick(rng, _NODULE_PRESENT).format(d=d, loc=location), f"{d} mm solid {location} nodule"
    filler = [_pick(rng, group) for group in _CT_FILLER if rng.random() < 0.8]
    return _assemble(rng, "CT chest without contrast.", [nodule, *filler], [imp] if imp else [],
                     ("No pulmonary nodules.", "No pulmonary nodules. No acute intrathoracic abnormality."))
