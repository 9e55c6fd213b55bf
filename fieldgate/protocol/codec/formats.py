"""Which codec decodes which inbound topic format (see :mod:`fieldgate.protocol.topics`).

Adapters call ``decoder_for(parse_inbound(topic).codec)`` and stay ignorant of the codecs
themselves; a new payload format is one more ``Format`` value and one more case here.
"""

from __future__ import annotations

from fieldgate.protocol.codec import EventDecoder
from fieldgate.protocol.codec.json_events import decode_json
from fieldgate.protocol.codec.protobuf import decode_protobuf
from fieldgate.protocol.codec.sitewhere import decode_sitewhere
from fieldgate.protocol.codec.sitewhere_protobuf import decode_sitewhere_protobuf
from fieldgate.protocol.topics import Codec

__all__ = ["decoder_for"]


def decoder_for(fmt: Codec) -> EventDecoder:
    """The decoder for a topic's codec; ValueError for one no codec handles."""
    if fmt == "json":
        return decode_json
    if fmt == "protobuf":
        return decode_protobuf
    if fmt == "sitewhere":
        return decode_sitewhere
    if fmt == "sitewhere-protobuf":
        return decode_sitewhere_protobuf
    raise ValueError(f"no decoder for payload format {fmt!r}")
