"""Reading the Dockerfile and running its build steps without Docker.

No Docker engine runs where the tests do, so the package-building steps of the Dockerfile are
run here as the image build would run them: each stage gets a directory standing for its root
filesystem and a fresh virtualenv standing for the base image's Python; COPY copies from the
build context (filtered by .dockerignore, symlinks kept as links, as Docker does) or from
another stage's root; RUN commands run with every absolute path moved below the stage's root.
The steps that set up the operating system (user accounts, directories) are recognised and not
emulated; any other command fails the test, so a Dockerfile step this module cannot check is
noticed instead of silently skipped. One deliberate difference: ``--no-cache-dir`` is dropped,
so pip uses its cache (the flag only keeps the image small).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import venv
from dataclasses import dataclass, field
from pathlib import Path

# Commands of OS set-up that the emulation leaves out (they need root, and the package does not
# depend on them).
OS_SETUP = {"groupadd", "useradd", "install"}


@dataclass
class Instruction:
    keyword: str
    flags: dict[str, str]
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARGs, stages) of a Dockerfile. Handles comments, line continuations, ``--flag``s."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    for number, line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        flags: dict[str, str] = {}
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags[name] = value
            rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, value = rest.partition("=")
            global_args[name] = value
            continue
        if keyword == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), ""), parts[0])
            alias = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
            continue
        stages[-1].instructions.append(Instruction(keyword, flags, rest, number))
    return global_args, stages


def run_commands(instruction: Instruction) -> list[list[str]]:
    """The commands of a shell-form RUN, split at ``&&``."""
    words = shlex.split(instruction.args)
    commands: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            commands.append([])
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def exec_form(instruction: Instruction) -> list[str]:
    value = json.loads(instruction.args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), instruction
    return value


# ---- .dockerignore -------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        ch = pattern[i]
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        i += 1
    return re.compile(f"^{out}$")


class DockerIgnore:
    """Docker's .dockerignore: a path is excluded when the last pattern matching it or one of
    its parent directories is not an exception (``!``)."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((negate, _pattern_regex(pattern)))

    def excluded(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                result = not negate
        return result


# ---- emulation -----------------------------------------------------------------------------


@dataclass
class StageResult:
    root: Path
    env: dict[str, str]
    skipped: list[str]
    user: str | None
    entrypoint: list[str] | None
    workdir: str


class Emulator:
    def __init__(self, context: Path, workspace: Path) -> None:
        self.context = context
        self.workspace = workspace
        ignore_file = context / ".dockerignore"
        self.ignore = DockerIgnore(ignore_file.read_text() if ignore_file.exists() else "")
        self.stages: dict[str, StageResult] = {}
        self.log: list[str] = []

    def image_path(self, root: Path, path: str) -> Path:
        return root / path.lstrip("/")

    def map_word(self, root: Path, word: str) -> list[str]:
        """An argument with every absolute path moved below ``root`` (also in ``--opt=/path``);
        globs expanded as the shell would."""
        prefix, value = "", word
        if word.startswith("-") and "=" in word:
            prefix, _, value = word.partition("=")
            prefix += "="
        if not value.startswith("/"):
            return [word]
        mapped = str(self.image_path(root, value))
        if any(ch in mapped for ch in "*?["):
            found = sorted(glob.glob(mapped))
            if not found:
                raise AssertionError(f"{word}: no file matches {mapped}")
            return [prefix + f for f in found]
        return [prefix + mapped]

    def copy_from_context(self, sources: list[str], dest: Path) -> None:
        for src in sources:
            path = self.context / src
            if not path.exists():
                raise AssertionError(f"COPY {src}: not in the build context")
            rel_root = os.path.relpath(path, self.context)
            if self.ignore.excluded(rel_root):
                raise AssertionError(f"COPY {src}: excluded by .dockerignore")
            if path.is_dir() and not path.is_symlink():
                target = dest  # COPY dir/ dest/ copies the directory's contents
                for dirpath, dirnames, filenames in os.walk(path):
                    rel_dir = os.path.relpath(dirpath, self.context)
                    kept = []
                    for d in dirnames:
                        rel = os.path.normpath(os.path.join(rel_dir, d))
                        if self.ignore.excluded(rel):
                            continue
                        full = Path(dirpath) / d
                        out = target / os.path.relpath(full, path)
                        if full.is_symlink():  # Docker copies a link as a link
                            out.parent.mkdir(parents=True, exist_ok=True)
                            os.symlink(os.readlink(full), out)
                        else:
                            kept.append(d)
                    dirnames[:] = kept
                    for f in filenames:
                        rel = os.path.normpath(os.path.join(rel_dir, f))
                        if self.ignore.excluded(rel):
                            continue
                        full = Path(dirpath) / f
                        out = target / os.path.relpath(full, path)
                        out.parent.mkdir(parents=True, exist_ok=True)
                        if full.is_symlink():
                            os.symlink(os.readlink(full), out)
                        else:
                            shutil.copy2(full, out)
            else:
                out = dest / path.name if str(dest).endswith("/") or dest.is_dir() else dest
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)

    def run_stage(self, index: int, stage: Stage) -> StageResult:
        name = stage.name or str(index)
        root = self.workspace / f"stage-{name}" / "root"
        base_python = self.workspace / f"stage-{name}" / "base-python"
        assert re.match(r"^python:3\.\d+(-slim.*)?$", stage.base), (
            f"{stage.base}: not an official python image"
        )
        venv.EnvBuilder(with_pip=True).create(base_python)
        root.mkdir(parents=True)
        env = {
            **os.environ,
            "PATH": f"{base_python / 'bin'}:{os.environ['PATH']}",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        }
        env.pop("VIRTUAL_ENV", None)
        workdir = "/"
        result = StageResult(root, env, [], None, None, workdir)
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                workdir = ins.args if ins.args.startswith("/") else os.path.join(workdir, ins.args)
                self.image_path(root, workdir).mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "ENV":
                for item in shlex.split(ins.args):
                    key, _, value = item.partition("=")
                    if key == "PATH":
                        parts = [
                            env["PATH"] if p == "$PATH" else str(self.image_path(root, p))
                            for p in value.split(":")
                        ]
                        env["PATH"] = ":".join(parts)
                    else:
                        env[key] = value
            elif ins.keyword == "COPY":
                *sources, dest = shlex.split(ins.args)
                dest_path = self.image_path(
                    root, dest if dest.startswith("/") else os.path.join(workdir, dest)
                )
                if dest.endswith("/") or dest in (".", "./"):
                    dest_path.mkdir(parents=True, exist_ok=True)
                if "from" in ins.flags:
                    other = self.stages[ins.flags["from"]]
                    for src in sources:
                        shutil.copytree(
                            self.image_path(other.root, src), dest_path, symlinks=True, dirs_exist_ok=True
                        )
                else:
                    self.copy_from_context(sources, dest_path)
            elif ins.keyword == "RUN":
                if "mount" in ins.flags:
                    opts = dict(o.partition("=")[::2] for o in ins.flags["mount"].split(","))
                    assert opts.get("type") == "bind", f"line {ins.line}: only bind mounts are emulated"
                    source_root = self.stages[opts["from"]].root if "from" in opts else self.context
                    target = self.image_path(root, opts["target"])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(self.image_path(source_root, opts.get("source", "/")), target)
                for argv in run_commands(ins):
                    program = os.path.basename(argv[0])
                    if program in OS_SETUP:
                        result.skipped.append(shlex.join(argv))
                        continue
                    if program not in ("pip", "python", "python3") and not re.match(
                        r"^pip3?(\.\d+)?$", program
                    ):
                        raise AssertionError(f"Dockerfile line {ins.line}: cannot emulate {argv[0]!r}")
                    mapped = [
                        w for word in argv if word != "--no-cache-dir" for w in self.map_word(root, word)
                    ]
                    if not mapped[0].startswith(str(root)):  # not an image path: look it up on PATH
                        mapped[0] = shutil.which(argv[0], path=env["PATH"]) or argv[0]
                    self.log.append(f"[{name}] {shlex.join(argv)}")
                    proc = subprocess.run(
                        mapped,
                        cwd=self.image_path(root, workdir),
                        env=env,
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                    if proc.returncode != 0:
                        raise AssertionError(
                            f"Dockerfile line {ins.line}: {shlex.join(argv)} exited {proc.returncode}:\n"
                            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                        )
            elif ins.keyword == "USER":
                result.user = ins.args
            elif ins.keyword == "ENTRYPOINT":
                result.entrypoint = exec_form(ins)
            elif ins.keyword in ("LABEL", "EXPOSE", "CMD", "ARG", "HEALTHCHECK", "STOPSIGNAL"):
                pass
            else:
                raise AssertionError(f"Dockerfile line {ins.line}: {ins.keyword} is not emulated")
        result.workdir = workdir
        self.stages[name] = result
        return result

    def build(self, dockerfile: Path) -> StageResult:
        """Runs every stage; returns the last one (the image)."""
        _, stages = parse(dockerfile.read_text())
        last = None
        for i, stage in enumerate(stages):
            last = self.run_stage(i, stage)
        assert last is not None, "no stage"
        return last
