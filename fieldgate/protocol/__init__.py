"""The device protocol layer shared by the edge, the cloud and the firmware simulators: MQTT
topics, payload formats, the codecs' pure parts and their errors. No I/O: it imports only
``fieldgate.v1``, ``fieldgate.timeutil``, ``fieldgate.errors`` and the standard library."""
