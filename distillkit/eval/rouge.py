"""ROUGE-L as the papers compute it (MiniLLM/DSKD ``rouge_metric.py``).

``rouge_score``'s ROUGE-L F1 with the Porter stemmer and its default tokenizer (lower-cased,
non-alphanumerics dropped), times 100, maximised over the references of a row (S-NI rows
carry several).
"""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer


@lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    """The one shared scorer (building it loads the stemmer; reuse it)."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: list[str] | str) -> float:
    """ROUGE-L F1 × 100 of ``prediction`` against its best-matching reference.

    An empty prediction (or one with no alphanumeric token) scores 0.
    """
    if isinstance(references, str):
        references = [references]
    if not references:
        raise ValueError("rouge_l needs at least one reference; got an empty list.")
    scorer = _scorer()
    # RougeScorer.score(target, prediction): the reference comes first.
    return 100.0 * max(scorer.score(str(ref), prediction)["rougeL"].fmeasure for ref in references)
