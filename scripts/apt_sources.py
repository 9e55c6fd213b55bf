#!/usr/bin/env python3
"""Print the machine's own Debian apt sources of one release as one-line ``deb`` entries.

Used by the scripts that make Debian root filesystems with mmdebstrap (scripts/gateway_base.sh):
the sources come from the one-line and deb822 files under /etc/apt, so whatever mirror (and
proxy) the machine is set up with is used, and no registry host is written anywhere. Only the
entries of the release's suites are printed (``<release>``, ``<release>-updates``,
``<release>-security`` ...).

Usage: python3 scripts/apt_sources.py RELEASE [--etc DIR]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys


def _one_line_entries(paths: list[str]) -> list[tuple[str, str, str, str]]:
    entries = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = words[1:]
            options = ""
            if words and words[0].startswith("["):
                opt = []
                while words:
                    w = words.pop(0)
                    opt.append(w)
                    if w.endswith("]"):
                        break
                options = " ".join(opt)[1:-1].strip()
            if len(words) >= 3:
                entries.append((options, words[0], words[1], " ".join(words[2:])))
    return entries


def _deb822_entries(paths: list[str]) -> list[tuple[str, str, str, str]]:
    entries = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for block in text.split("\n\n"):
            fields: dict[str, str] = {}
            key = None
            for line in block.splitlines():
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            # Signed-By as a keyring path (an inline key block cannot go on a one-line entry).
            signed_by = fields.get("signed-by", "")
            options = f"signed-by={signed_by}" if signed_by and "BEGIN PGP" not in signed_by else ""
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append((options, uri, suite, fields.get("components", "main")))
    return entries


def sources(release: str, etc: str = "/etc/apt") -> list[str]:
    one_line = [
        os.path.join(etc, "sources.list"),
        *sorted(glob.glob(os.path.join(etc, "sources.list.d/*.list"))),
    ]
    entries = _one_line_entries(one_line) + _deb822_entries(
        sorted(glob.glob(os.path.join(etc, "sources.list.d/*.sources")))
    )
    out = []
    for options, uri, suite, components in entries:
        if suite == release or suite.startswith(release + "-") or suite.startswith(release + "/"):
            out.append(
                f"deb [{options}] {uri} {suite} {components}"
                if options
                else f"deb {uri} {suite} {components}"
            )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("release")
    parser.add_argument("--etc", default="/etc/apt")
    ns = parser.parse_args()
    lines = sources(ns.release, ns.etc)
    if not lines:
        print(f"apt_sources: no apt source of Debian {ns.release} under {ns.etc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
