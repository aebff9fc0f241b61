"""Zero-shot classification from prompt sets, following the scikit-learn estimator API.

Each finding has a versioned YAML prompt set of positive and negative phrasings.
The class score of an embedding x is s·(cos(x, p̄) − cos(x, n̄)), where p̄ and n̄
are the normalised means of the positive and negative prompt embeddings and s the
model's learnt inverse temperature; its sigmoid is the two-way softmax
probability of the positive class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from medfm.config import Config, load_config
from medfm.keys import Modality
from medfm.models.multimodal import MultimodalModel
from medfm.registry import HEADS


class PromptSet(Config):
    """Schema of ``configs/prompts/*.yaml``."""

    finding: str
    version: str
    description: str = ""
    positive: list[str] = Field(min_length=1)
    negative: list[str] = Field(min_length=1)


def load_prompt_set(path: str | Path) -> PromptSet:
    return load_config(path, PromptSet)


@torch.no_grad()
def embed_texts(model: MultimodalModel, texts: list[str], batch_size: int = 64) -> torch.Tensor:
    model.eval()
    parts = [model.encode(Modality.REPORT, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat(parts)


@HEADS.register("zero_shot")
class ZeroShotClassifier:
    """Binary zero-shot classifier per finding.

    Args:
        model: an aligned model with a ``report`` encoder.
        prompt_sets: one prompt set per finding.

    Attributes (after ``fit``):
        findings_: finding names, in column order.
        positive_, negative_: ``(n_findings, D)`` unit prompt-ensemble embeddings.
        prompt_embeddings_: per finding, the individual ``positive``/``negative`` embeddings.
        scale_: the inverse temperature used for probabilities.
    """

    def __init__(self, model: MultimodalModel, prompt_sets: list[PromptSet]):
        self.model = model
        self.prompt_sets = prompt_sets

    def fit(self, X=None, y=None) -> ZeroShotClassifier:  # noqa: N803  (scikit-learn signature)
        """Embed the prompts. Zero-shot: no training data is used; X and y are ignored."""
        self.findings_ = [p.finding for p in self.prompt_sets]
        self.prompt_embeddings_ = {}
        positive, negative = [], []
        for prompts in self.prompt_sets:
            pos = embed_texts(self.model, prompts.positive)
            neg = embed_texts(self.model, prompts.negative)
            self.prompt_embeddings_[prompts.finding] = {"positive": pos, "negative": neg}
            positive.append(F.normalize(pos.mean(0), dim=-1))
            negative.append(F.normalize(neg.mean(0), dim=-1))
        self.positive_ = torch.stack(positive)
        self.negative_ = torch.stack(negative)
        self.scale_ = float(self.model.temperature_scale().detach())
        return self

    def decision_function(self, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(n, n_findings)`` logits s·(cos(x, p̄) − cos(x, n̄))."""
        x = torch.as_tensor(embeddings, dtype=torch.float32)
        return (self.scale_ * (x @ self.positive_.T - x @ self.negative_.T)).numpy()

    def predict_proba(self, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(n, n_findings)`` probability that each finding is present."""
        return 1.0 / (1.0 + np.exp(-self.decision_function(embeddings)))

    def predict(self, embeddings: torch.Tensor | np.ndarray) -> np.ndarray:
        return (self.predict_proba(embeddings) >= 0.5).astype(int)

    def single_prompt_scores(self, embeddings: torch.Tensor | np.ndarray, finding: str) -> dict[str, np.ndarray]:
        """Scores from each prompt alone, to show how much the ensemble depends on wording.

        A positive prompt p scores cos(x, p) − cos(x, n̄); a negative prompt n scores
        cos(x, p̄) − cos(x, n). Keys are the prompt texts.
        """
        x = torch.as_tensor(embeddings, dtype=torch.float32)
        j = self.findings_.index(finding)
        prompts = next(p for p in self.prompt_sets if p.finding == finding)
        emb = self.prompt_embeddings_[finding]
        out = {}
        for text, e in zip(prompts.positive, emb["positive"], strict=True):
            out[f"+ {text}"] = (x @ e - x @ self.negative_[j]).numpy()
        for text, e in zip(prompts.negative, emb["negative"], strict=True):
            out[f"- {text}"] = (x @ self.positive_[j] - x @ e).numpy()
        return out
