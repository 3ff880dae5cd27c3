"""Which lead of a source the model is given: the one place that decides.

``input_lead`` is ``I``, ``II``, ``I+II`` (that input, always) or ``auto``. With ``auto`` a
source holding several leads is reconstructed from the first input of :data:`PREFERENCE`
whose leads it holds and that the signal-quality gate lets through: I and II together (the
two-lead model) when both pass, else lead I, else lead II (a near-isoelectric or otherwise
refused lead I: lead II); a one-lead source from the lead it is (its sidecar's, else I). A
model for a new input is one more entry of :data:`PREFERENCE`, with the leads it needs.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ecg_dicom.leads import MODEL_INPUTS

AUTO = "auto"
INPUT_LEAD_CHOICES: tuple[str, ...] = (*MODEL_INPUTS, AUTO)
# the model inputs in the order they are tried with ``auto``: name -> the source leads it needs
# I+II first: on records no model trained on its V1-V6 mean r is 0.720 against 0.665 (lead I)
# and 0.676 (lead II) on the same 22 records (README, model card)
PREFERENCE: tuple[tuple[str, tuple[str, ...]], ...] = (("I+II", ("I", "II")), ("I", ("I",)), ("II", ("II",)))


def model_leads(input_lead: str) -> tuple[str, ...]:
    """The models a setting needs loaded: ``auto`` -> every input of :data:`PREFERENCE`."""
    return tuple(name for name, _ in PREFERENCE) if input_lead == AUTO else (input_lead,)


def choose_input_lead(held: Iterable[str], refusal: Callable[[str], Exception | None],
                      models: Iterable[str] | None = None) -> str:
    """The model input for a source holding the leads ``held``, with ``auto``.

    ``refusal(name)``: None when the gate lets input ``name`` through, else the error that
    refuses it (asked lazily, in order of preference). Returns the first input of
    :data:`PREFERENCE` whose leads are held, whose model is among ``models`` (None: any)
    and which is not refused; raises the first
    refusal when every candidate is refused, ValueError when the source holds none of them.
    """
    held = set(held)
    loaded = None if models is None else set(models)
    first: Exception | None = None
    tried = False
    for name, needs in PREFERENCE:
        if not all(lead in held for lead in needs) or (loaded is not None and name not in loaded):
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
