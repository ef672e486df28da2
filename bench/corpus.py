"""Deterministic template corpora for the benchmarks, each committed to its own Git repository.

A corpus is a tree of YAML/shell/Python-like text files in nested directories (plus, for `large`, semi-compressible
and random binary blobs), a few executables, in-tree symlinks, non-ASCII names and paths over 100 bytes (which need
pax headers). It lives under `tpl/` of a fresh repository next to a little unrelated content, so the Git path is not
the root. The same spec and seed give the same bytes on every run (with the same Python), hence the same digest.
"""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_PATH = "tpl"
_TEXT_SUFFIXES = (".yml", ".yml", ".yml", ".sh", ".py", ".j2", ".md", ".json", ".cfg", ".txt")
_DIR_WORDS = (
    "roles",
    "tasks",
    "handlers",
    "templates",
    "files",
    "vars",
    "defaults",
    "scripts",
    "lib",
    "checks",
    "nginx",
    "postgres",
    "redis",
    "backup",
    "deploy",
    "monitoring",
    "network",
    "users",
    "kernel",
    "disk",
)
_SYLLABLES = (
    "ka",
    "lo",
    "mi",
    "ne",
    "su",
    "ta",
    "ri",
    "po",
    "de",
    "an",
    "el",
    "or",
    "un",
    "ex",
    "sh",
    "st",
    "ch",
    "ing",
    "er",
    "on",
    "at",
    "is",
    "ve",
    "co",
    "ma",
    "pa",
    "se",
    "ti",
    "ro",
    "ba",
)
_PUNCTUATION = (":", "=", "-", "{{", "}}", "#", "|", "&&", "$", "(", ")", '"', "0", "1", "true", "false", "\\")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass(frozen=True)
class CorpusSpec:
    """How many files of each kind a corpus holds, and their total bytes (file sizes follow a log-normal law)."""

    name: str
    seed: int
    text_files: int
    text_bytes: int
    semi_files: int = 0
    semi_bytes: int = 0
    random_files: int = 0
    random_bytes: int = 0


SPECS = {
    "small": CorpusSpec("small", seed=101, text_files=200, text_bytes=2_000_000),
    "medium": CorpusSpec("medium", seed=202, text_files=5_000, text_bytes=60_000_000),
    "large": CorpusSpec(
        "large",
        seed=303,
        text_files=5_400,
        text_bytes=100_000_000,
        semi_files=400,
        semi_bytes=44_000_000,
        random_files=200,
        random_bytes=56_000_000,
    ),
}


@dataclass(frozen=True)
class Corpus:
    """A generated corpus: its repository, the commit holding it, and the checked-out template directory."""

    spec: CorpusSpec
    repo: Path
    commit: str
    files: int
    """Members of the canonical tar: files and symlinks under `tpl/`."""
    content_bytes: int

    @property
    def directory(self) -> Path:
        return self.repo / TEMPLATE_PATH


def generate(spec: CorpusSpec, parent: Path) -> Corpus:
    """Write the corpus of `spec` into a new repository under `parent` and commit it into a packed object
    database (as a mirror fetched from a server has). The work tree holds the same files: the checkout."""
    rng = random.Random(spec.seed)  # noqa: S311 -- reproducible test data, not secrets
    repo = parent / spec.name
    root = repo / TEMPLATE_PATH
    root.mkdir(parents=True)
    directories = _directories(rng, max(4, (spec.text_files + spec.semi_files + spec.random_files) // 12))
    paths = _unique_paths(rng, directories, spec.text_files + spec.semi_files + spec.random_files)
    bank = _line_bank(rng, max(5_000, min(400_000, spec.text_bytes // 150)))
    kinds = ["text"] * spec.text_files + ["semi"] * spec.semi_files + ["random"] * spec.random_files
    sizes = (
        _sizes(rng, spec.text_files, spec.text_bytes, sigma=1.1)
        + _sizes(rng, spec.semi_files, spec.semi_bytes, sigma=1.4)
        + _sizes(rng, spec.random_files, spec.random_bytes, sigma=1.4)
    )
    paths = [_with_kind_suffix(path, kind) for path, kind in zip(paths, kinds, strict=True)]
    with _FastImport(repo) as git_import:
        for path, kind, size in zip(paths, kinds, sizes, strict=True):
            if kind == "semi":
                data = semi_compressible(rng, size)
            elif kind == "random":
                data = rng.randbytes(size)
            else:
                data = _text(rng, bank, size)
            location = root / path
            location.parent.mkdir(parents=True, exist_ok=True)
            location.write_bytes(data)
            executable = path.suffix == ".sh"
            if executable:
                location.chmod(0o755)
            git_import.add(f"{TEMPLATE_PATH}/{path.as_posix()}", data, "100755" if executable else "100644")
        links = _symlinks(rng, root, paths, count=max(2, len(paths) // 250))
        for link, target in links:
            git_import.add(f"{TEMPLATE_PATH}/{link.as_posix()}", target.encode(), "120000")
        for name, text in (("README.md", "The template is under tpl/.\n"), ("other/notes.txt", "Unrelated.\n" * 99)):
            (repo / name).parent.mkdir(exist_ok=True)
            (repo / name).write_text(text)
            git_import.add(name, text.encode(), "100644")
        commit = git_import.commit("benchmark corpus")
    return Corpus(spec, repo, commit, files=len(paths) + len(links), content_bytes=sum(sizes))


def _directories(rng: random.Random, count: int) -> list[Path]:
    found = [Path(".")]
    while len(found) < count:
        parent = rng.choice(found[-50:] + found[:10])
        if len(parent.parts) >= 5:
            continue
        name = f"{rng.choice(_DIR_WORDS)}_{len(found)}"
        found.append(parent / name)
    found.append(Path("données") / "配置")  # non-ASCII names
    found.append(Path("very_long_directory_name_" * 3) / ("and_another_long_directory_name_" * 2))  # > 100 bytes
    return found


def _unique_paths(rng: random.Random, directories: list[Path], count: int) -> list[Path]:
    return [
        rng.choice(directories) / f"{rng.choice(_DIR_WORDS)}_{number:05d}{rng.choice(_TEXT_SUFFIXES)}"
        for number in range(count)
    ]


def _with_kind_suffix(path: Path, kind: str) -> Path:
    return path.with_suffix({"semi": ".bin", "random": ".gz"}.get(kind, path.suffix))


def _sizes(rng: random.Random, count: int, total: int, *, sigma: float) -> list[int]:
    """`count` log-normal sizes scaled to add up to about `total` bytes."""
    if count == 0:
        return []
    weights = [rng.lognormvariate(0.0, sigma) for _ in range(count)]
    scale = total / sum(weights)
    return [max(1, round(weight * scale)) for weight in weights]


def _line_bank(rng: random.Random, count: int) -> list[bytes]:
    """Lines of a pseudo-language with a Zipf-like vocabulary: compresses about like configuration and scripts."""
    vocabulary = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(4_000)]
    vocabulary += list(_PUNCTUATION)
    rng.shuffle(vocabulary)
    # Word of rank r appears about 1/r as often as the first: repeated in the pool rather than weighted per draw.
    pool = [word for rank, word in enumerate(vocabulary, 1) for _ in range(max(1, 2_000 // rank))]
    words = rng.choices(pool, k=count * 7)
    lengths = rng.choices(range(1, 14), k=count)
    indents = rng.choices(["", "  ", "    ", "      ", "        "], k=count)
    lines = []
    position = 0
    for length, indent in zip(lengths, indents, strict=True):
        lines.append((indent + " ".join(words[position : position + length])).encode())
        position = (position + length) % (len(words) - 13)
    return lines


def _text(rng: random.Random, bank: list[bytes], size: int) -> bytes:
    data = b"\n".join(rng.choices(bank, k=size // 40 + 2))
    while len(data) < size:  # rare: a run of short lines
        data += b"\n" + b"\n".join(rng.choices(bank, k=size // 40 + 2))
    return data[: size - 1] + b"\n"


def semi_compressible(rng: random.Random, size: int) -> bytes:
    """Random bytes over a 16- or 64-symbol alphabet: entropy 4 or 6 bits a byte (packed data, base64 blobs)."""
    alphabet = (
        b"0123456789abcdef"
        if rng.random() < 0.5
        else b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    )
    table = bytes(alphabet[byte % len(alphabet)] for byte in range(256))
    return rng.randbytes(size).translate(table)


def _symlinks(rng: random.Random, root: Path, paths: list[Path], *, count: int) -> list[tuple[Path, str]]:
    """Relative symlinks to files elsewhere in the tree: (link, target) pairs."""
    made = []
    for number in range(count):
        target = rng.choice(paths)
        link = rng.choice(paths).parent / f"link_{number:03d}"
        relative = os.path.relpath(target, link.parent)
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(relative, root / link)
        made.append((link, relative))
    return made


class _FastImport:
    """One commit streamed into `git fast-import`, which writes a single pack: no loose objects (6,000 small files
    are slow to create on these disks) and no repack. Blobs are deflated at level 1 to keep setup short; inflating
    them costs about the same as at the default level."""

    def __init__(self, repo: Path) -> None:
        self._env = {**os.environ, **GIT_ENV}
        self._repo = repo
        subprocess.run(["git", "-C", str(repo), "init", "--quiet", "--initial-branch=main"], check=True, env=self._env)
        command = ["git", "-C", str(repo), "-c", "pack.compression=1", "fast-import", "--quiet", "--depth=0"]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, env=self._env)
        assert self._process.stdin is not None
        self._stdin = self._process.stdin
        self._members: list[str] = []

    def add(self, path: str, data: bytes, mode: str) -> None:
        mark = len(self._members) + 1
        self._stdin.write(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        self._members.append(f"M {mode} :{mark} {path}\n")

    def commit(self, message: str) -> str:
        identity = "bench <bench@example.invalid> 1704067200 +0000"
        header = f"commit refs/heads/main\nauthor {identity}\ncommitter {identity}\n"
        self._stdin.write(f"{header}data {len(message)}\n{message}\n{''.join(self._members)}\n".encode())
        self._stdin.close()
        if self._process.wait() != 0:
            raise RuntimeError(f"git fast-import failed in {self._repo}")
        result = subprocess.run(["git", "-C", str(self._repo), "rev-parse", "HEAD"], check=True, capture_output=True)
        return result.stdout.decode().strip()

    def __enter__(self) -> _FastImport:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process.poll() is None:  # an error before commit(): do not leave git running
            self._process.kill()
            self._process.wait()
