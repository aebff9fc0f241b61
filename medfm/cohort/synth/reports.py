"""Free-text radiology and cardiology reports written from a visit's ground truth.

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
