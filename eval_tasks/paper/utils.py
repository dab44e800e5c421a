"""Prompt and scoring helpers for the DPPA paper's six lm-eval tasks.

lm-eval imports this file by path (``!function utils.<name>`` next to the YAML), so it uses the
standard library only and never imports the ``dppa_peft`` package.

Maths (GSM8K, MATH) follows the Abel evaluation (GAIR-NLP/abel): prompt
``Question:\\n{q}\\nAnswer:\\nLet's think step by step.\\n``; the final answer is the text after the last
``####`` (Abel's own format), else after the last "The answer is", else the last ``\\boxed{...}``, else the
last number. Answers are compared after a light LaTeX normalisation (after Hendrycks' ``is_equiv``) and
numerically where both sides parse as numbers.

The four AdaptLLM classification tasks count a generation as correct when it contains the gold choice
string (case-insensitive, whitespace-collapsed), as in the DPPA paper (``acc``). ``acc_strict`` also
requires that no other choice is mentioned, which exposes generations that list every option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

ABEL_PROMPT = "Question:\n{question}\nAnswer:\nLet's think step by step.\n"
_REL_TOL = 1e-6

# ----------------------------------------------------------------------------------------------- prompts


def gsm8k_prompt(doc: dict[str, Any]) -> str:
    """Abel's zero-shot prompt for a GSM8K row (``question``)."""
    return ABEL_PROMPT.format(question=doc["question"])


def math_prompt(doc: dict[str, Any]) -> str:
    """Abel's zero-shot prompt for a MATH row (``problem``)."""
    return ABEL_PROMPT.format(question=doc["problem"])


def choices_prompt(doc: dict[str, Any]) -> str:
    """AdaptLLM ``input`` with the ``options`` listed before the final ``Answer:`` cue."""
    text = re.sub(r"\s*Answer:\s*$", "", doc["input"].rstrip())
    listed = "\n".join(f"- {option}" for option in doc["options"])
    return f"{text}\nOptions:\n{listed}\nAnswer:"


# ------------------------------------------------------------------------------------- answer extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed), or ``\\boxed x``."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    rest = text[start:].split("box", 1)[1].removeprefix("ed")
    if rest.startswith(" "):
        return rest[1:].split("$")[0].strip() or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, char in enumerate(rest):
        depth += char == "{"
        depth -= char == "}"
        if depth == 0:
            return rest[1:i]
    return None


def _after_last(marker: str, text: str) -> str | None:
    """The rest of the line after the last case-insensitive ``marker``."""
    found = [m.end() for m in re.finditer(re.escape(marker), text, flags=re.IGNORECASE)]
    if not found:
        return None
    answer = text[found[-1] :].lstrip(" :").split("\n")[0].strip()
    return answer or None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def last_number(text: str) -> str | None:
    """The last number in ``text`` (thousands separators kept; normalisation strips them)."""
    numbers = _NUMBER.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


def extract_answer(generation: str) -> str | None:
    """Final answer of a maths generation: ``####``, "The answer is", ``\\boxed{}``, then last number."""
    text = generation.split("Question:")[0]
    for finder in (
        lambda t: _after_last("####", t),
        lambda t: _after_last("The answer is", t),
        last_boxed,
        last_number,
    ):
        answer = finder(text)
        if answer is not None:
            return answer
    return None


def gsm8k_gold(doc: dict[str, Any]) -> str:
    """GSM8K reference answer: the text after ``####`` in ``answer``."""
    return doc["answer"].split("####")[-1].strip()


def math_gold(doc: dict[str, Any]) -> str:
    """MATH reference answer: the last ``\\boxed{}`` in ``solution``."""
    answer = last_boxed(doc["solution"])
    if answer is None:
        raise ValueError(f"MATH solution has no \\boxed{{}} answer: {doc['solution'][:80]!r}")
    return answer


# ----------------------------------------------------------------------------------------- normalisation

_REMOVED = (
    "\\!", "\\,", "\\;", "\\left", "\\right", "\\displaystyle", "^{\\circ}", "^\\circ",
    "\\$", "$", "\\%", "%",
)  # fmt: skip


def _fix_fracs(text: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``."""
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", text)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", text)


def _drop_units(text: str) -> str:
    """Drop trailing units: ``5\\text{ cm}`` -> ``5``, ``18 dollars`` -> ``18``; unwrap other ``\\text{}``."""
    text = re.sub(r"(?<=\S)\s*\\(?:text|mbox)\{\s[^{}]*\}$", "", text)
    text = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", text).strip()
    return re.sub(r"^(-?[\d,]*\.?\d+)\s+[A-Za-z][A-Za-z\s.]*$", r"\1", text)


def normalize_answer(answer: str) -> str:
    """Light normalisation of a final answer (after Hendrycks' ``strip_string``).

    Unwraps ``\\boxed{}``; drops ``$``, ``%``, degrees, ``\\left``/``\\right``, spacing macros, units
    (``\\text{ cm}``, "18 dollars"), thousands separators, a trailing ``.`` and a leading ``x =``;
    ``dfrac``/``tfrac`` -> ``frac``, ``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt2`` -> ``\\sqrt{2}``; removes spaces.
    """
    text = answer.strip()
    boxed = last_boxed(text)
    text = boxed if boxed is not None else text
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\\\", "\\")
    for token in _REMOVED:
        text = text.replace(token, "")
    text = _drop_units(text.strip())
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)
    text = re.sub(r"^[a-zA-Z]\s*=\s*", "", text).rstrip(".").strip()
    text = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", _fix_fracs(text))
    return text.replace(" ", "")


def to_number(answer: str) -> float | None:
    """Numeric value of a normalised answer (integer, decimal, ``a/b``, ``\\frac{a}{b}``), else None."""
    sign = -1.0 if answer.startswith("-") else 1.0
    body = answer.removeprefix("-")
    frac = re.fullmatch(r"\\frac\{(\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}|(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", body)
    if frac:
        num, den = (float(g) for g in frac.groups() if g is not None)
        return sign * num / den if den else None
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", body):
        return sign * float(body)
    return None


def is_equiv(prediction: str | None, reference: str) -> bool:
    """True when the normalised answers are equal as strings or as numbers."""
    if prediction is None:
        return False
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if pred == ref:
        return True
    pred_num, ref_num = to_number(pred), to_number(ref)
    if pred_num is None or ref_num is None:
        return False
    return math.isclose(pred_num, ref_num, rel_tol=_REL_TOL, abs_tol=1e-9)


def process_gsm8k(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for GSM8K: ``acc`` = extracted answer equals the gold number."""
    return {"acc": float(is_equiv(extract_answer(results[0]), gsm8k_gold(doc)))}


def process_math(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for MATH: ``acc`` = extracted answer equivalent to the boxed gold."""
    return {"acc": float(is_equiv(extract_answer(results[0]), math_gold(doc)))}


# ------------------------------------------------------------------------------------ choice containment


def _squash(text: str) -> str:
    """Lower-case and collapse whitespace, for containment tests."""
    return " ".join(text.lower().split())


def gold_choices(doc: dict[str, Any]) -> list[str]:
    """The gold option strings of an AdaptLLM row (``gold_index`` is an int, or a list for UNFAIR_ToS)."""
    indices = doc["gold_index"] if isinstance(doc["gold_index"], list) else [doc["gold_index"]]
    if not indices:
        raise ValueError(f"row {doc.get('id')!r} has an empty gold_index; it cannot be scored")
    return [doc["options"][i] for i in indices]


def choice_target(doc: dict[str, Any]) -> str:
    """The gold option(s) as one string, for lm-eval's logged ``target``."""
    return " | ".join(gold_choices(doc))


def contains_choice(generation: str, choice: str) -> bool:
    """True when ``choice`` occurs in ``generation`` (case-insensitive, whitespace-collapsed)."""
    return _squash(choice) in _squash(generation)


def mentioned_choices(generation: str, options: Sequence[str]) -> list[str]:
    """The options that ``generation`` contains, in option order."""
    return [option for option in options if contains_choice(generation, option)]


def process_choice(doc: dict[str, Any], results: Sequence[str]) -> dict[str, float]:
    """lm-eval ``process_results`` for the AdaptLLM tasks: ``acc`` (paper) and ``acc_strict``."""
    gold = gold_choices(doc)
    mentioned = mentioned_choices(results[0], doc["options"])
    return {
        "acc": float(any(contains_choice(results[0], choice) for choice in gold)),
        "acc_strict": float(bool(mentioned) and set(mentioned) <= set(gold)),
    }
