"""Command rules shared by the command service (cloud/services/commands.py) and the pipeline
stages that see command responses (inbound processing, command delivery).

A device answers only its own commands (:func:`response_refusal`): a command_response is linked
to an invocation only when it comes from the device the invocation was for, in the same tenant
(batch invocations, whose ids are derived, included). Inbound processing records the verdict
on the event (``CommandResponse.refused``) before it is stored, and the command response stage
applies the same rule before it links anything.
"""

from __future__ import annotations

from fieldgate.v1 import services_pb2 as svc

#: The longest time-to-live of a command invocation (7 days): the command service and the batch
#: operations' documents refuse longer ones.
MAX_TTL_S = 7 * 24 * 3600

#: ``CommandResponse.refused`` reasons: the response names no invocation of its tenant, or one
#: for another device (which one is not said: the answering device's events may be visible to
#: users who must not learn the other device's token).
REFUSED_UNKNOWN = "unknown invocation"
REFUSED_OTHER_DEVICE = "the invocation is for another device"


def response_refusal(state: svc.InvocationState | None, tenant: str, device: str) -> str:
    """Why a command_response of ``device`` (of ``tenant``) must not be linked to the invocation
    ``state`` (looked up by the response's invocation id in ``tenant``): one of the ``REFUSED_*``
    reasons, or "" when the response is the invocation's own device's and may be linked."""
    if state is None:
        return REFUSED_UNKNOWN
    if state.tenant != tenant or state.device != device:
        return REFUSED_OTHER_DEVICE
    return ""
