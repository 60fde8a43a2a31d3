"""Client-side clipping for Flower's central differential privacy, only when asked for.

Flower's ``fixedclipping_mod`` clips a site's model update (its change from the global
model) to the norm the server's ``DifferentialPrivacyClientSideFixedClipping`` wrapper
puts in the train config; it errors when that key is missing. `clip_if_requested`
applies it only then, so the one ClientApp serves runs with and without DP. It is
attached to training messages only: evaluation replies carry counts, not a model.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM


def clip_if_requested(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip the reply's model update when the server sent a clipping norm.

    Parameters
    ----------
    msg : Message
        The incoming training message.
    context : Context
        The node's context.
    call_next : callable
        The rest of the ClientApp.

    Returns
    -------
    Message
        The reply, its arrays clipped to ``global + clip(update)`` when DP is on.
    """
    # Read directly: ``RecordDict.config_records`` builds a checked dictionary per call.
    if any(isinstance(r, ConfigRecord) and KEY_CLIPPING_NORM in r for r in msg.content.values()):
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)
