"""Which lead of a source the model is given: the one place that decides.

``input_lead`` is ``I``, ``II`` (that lead, always) or ``auto``. With ``auto`` a source
holding several leads is reconstructed from the first lead of :data:`PREFERENCE` that it holds
and that the signal-quality gate lets through (lead I unless it is near-isoelectric or
otherwise refused and lead II is fine); a one-lead source from the lead it is (its sidecar's,
else I). A model for a new input (``I+II``) is one more entry of :data:`PREFERENCE`, with the
leads it needs.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ecg_dicom.leads import MODEL_INPUTS

AUTO = "auto"
INPUT_LEAD_CHOICES: tuple[str, ...] = (*MODEL_INPUTS, AUTO)
# the model inputs in the order they are tried with ``auto``: name -> the source leads it needs
PREFERENCE: tuple[tuple[str, tuple[str, ...]], ...] = (("I", ("I",)), ("II", ("II",)))


def model_leads(input_lead: str) -> tuple[str, ...]:
    """The models a setting needs loaded: ``auto`` -> every input of :data:`PREFERENCE`."""
    return tuple(name for name, _ in PREFERENCE) if input_lead == AUTO else (input_lead,)


def choose_input_lead(held: Iterable[str], refusal: Callable[[str], Exception | None]) -> str:
    """The model input for a source holding the leads ``held``, with ``auto``.

    ``refusal(name)``: None when the gate lets input ``name`` through, else the error that
    refuses it (asked lazily, in order of preference). Returns the first input of
    :data:`PREFERENCE` whose leads are held and which is not refused; raises the first
    refusal when every candidate is refused, ValueError when the source holds none of them.
    """
    held = set(held)
    first: Exception | None = None
    tried = False
    for name, needs in PREFERENCE:
        if not all(lead in held for lead in needs):
            continue
        tried = True
        error = refusal(name)
        if error is None:
            return name
        first = first or error
    if first is not None:
        raise first
    if not tried:
        raise ValueError("the source holds none of the leads a model takes: "
                         + ", ".join("+".join(needs) for _, needs in PREFERENCE))
    raise AssertionError("unreachable")
