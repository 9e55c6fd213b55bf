"""The fieldgate edge agent: southbound adapters, durable buffer, uplink, command router.

Layering (imports go one way, low to high):
:mod:`fieldgate.protocol` (topics, codecs: pure, no I/O) → ``buffer`` / ``adapters`` (I/O, no
knowledge of the cloud) → ``uplink`` / ``commands`` → ``agent`` (orchestration only).
"""

# One module, one name: the folder is part of the package through the link fieldgate/edge. From the
# repository's root (on sys.path under pytest) it would import a second time under another
# name, with its own copies of every class and registry, so that is refused.
if __name__ != "fieldgate.edge":
    raise ImportError(
        f"{__name__!r} is the repository's edge/ folder: import it as fieldgate.edge"
        " (fieldgate/edge links to it; README.md, Where things are)",
        name=__name__,
    )
