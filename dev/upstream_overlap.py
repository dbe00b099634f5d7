"""How many lines of our files repeat an upstream project's code (the WebUI, k-diffusion, ldm, ControlNet, ...).

A line counts when, with its indentation and runs of spaces collapsed, it is at least MIN_CHARS long, is not a
comment, and occurs anywhere in the upstream sources of a project listed in UPSTREAM (every .py file at the named
revision of the bare git mirrors in $MIRRORS, default /work/.mirror). Signature lines (`def`/`class`) are counted
apart: a stand-in must have the real signatures. Usage:

    python dev/upstream_overlap.py [FILE_OR_DIR ...]      # default: the whole project

prints, per file, the equal lines out of its long lines, the signatures among them, and the worst project.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIN_CHARS = 20
# (mirror folder, revision): the revisions the WebUI 1.10.1 runs with, or the mirror's HEAD.
UPSTREAM = {
    "webui": ("kklouzal+stable-diffusion-webui", "v1.10.1"),
    "k-diffusion": ("crowsonkb+k-diffusion", "ab527a9a6d347f364e3d185ba6d714e22d80cb3c"),
    "ldm": ("Stability-AI+stablediffusion", "cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf"),
    "sd-webui-controlnet": ("Mikubill+sd-webui-controlnet", "HEAD"),
    "HandRefiner": ("wenquanlu+HandRefiner", "HEAD"),
    "MeshGraphormer": ("microsoft+MeshGraphormer", "HEAD"),
}
SUFFIXES = (".py", ".js")


def normalise(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip())


def is_long(norm: str) -> bool:
    """Long enough to say something, and not a comment, an import or a decorator (any project has those)."""
    return (len(norm) >= MIN_CHARS and not norm.startswith(("#", "//", "@", "import "))
            and not re.match(r"from \S+ import ", norm))


def is_signature(norm: str) -> bool:
    return norm.startswith(("def ", "async def ", "class "))


def mirrors() -> Path:
    return Path(os.environ.get("MIRRORS", "/work/.mirror"))


def available(project: str) -> bool:
    folder, rev = UPSTREAM[project]
    repo = mirrors() / folder / "repo"
    return repo.is_dir() and subprocess.run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", rev + "^{commit}"],
                                            capture_output=True).returncode == 0


def upstream_lines(project: str) -> set[str]:
    """Every long normalised line of the project's .py/.js files at its revision."""
    folder, rev = UPSTREAM[project]
    repo = str(mirrors() / folder / "repo")
    names = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", rev], check=True,
                           capture_output=True, text=True).stdout.split("\n")
    wanted = [f"{rev}:{n}" for n in names if n.endswith(SUFFIXES)]
    # One `git cat-file --batch` for all files: blobs come back as "<sha> blob <size>\n<bytes>\n".
    out = subprocess.run(["git", "-C", repo, "cat-file", "--batch"], input="\n".join(wanted).encode(),
                         check=True, capture_output=True).stdout
    lines: set[str] = set()
    pos = 0
    while pos < len(out):
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split()
        if header[-1] == b"missing":
            pos = header_end + 1
            continue
        size = int(header[2])
        blob = out[header_end + 1:header_end + 1 + size].decode("utf-8", "replace")
        lines.update(n for n in map(normalise, blob.splitlines()) if is_long(n))
        pos = header_end + 1 + size + 1
    return lines


@dataclass
class Overlap:
    path: Path
    long_lines: int = 0
    equal: dict[str, list[str]] = field(default_factory=dict)  # project -> equal lines, signatures excluded
    signatures: int = 0  # equal lines that are def/class lines
    longest_run: int = 0  # most consecutive equal long lines, signatures left out (neither counted nor breaking)

    def worst(self) -> tuple[str, int]:
        return max(((p, len(v)) for p, v in self.equal.items()), key=lambda pv: pv[1], default=("-", 0))


def overlap(path: Path, upstream: dict[str, set[str]]) -> Overlap:
    result = Overlap(path)
    run = 0
    for norm in map(normalise, path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not is_long(norm):
            continue
        result.long_lines += 1
        hits = [p for p, lines in upstream.items() if norm in lines]
        if hits and is_signature(norm):
            result.signatures += 1
        elif not is_signature(norm):
            run = run + 1 if hits else 0
            result.longest_run = max(result.longest_run, run)
        for project in hits if not is_signature(norm) else ():
            result.equal.setdefault(project, []).append(norm)
    return result


def project_files(targets: list[Path]) -> list[Path]:
    files = []
    for target in targets:
        candidates = [target] if target.is_file() else sorted(target.rglob("*"))
        files += [f for f in candidates if f.suffix in SUFFIXES and ".venv" not in f.parts and f.is_file()]
    return files


def main(argv: list[str]) -> int:
    default = [ROOT / d for d in ("lib_handrefiner", "scripts", "javascript", "tests")]
    targets = [Path(a).resolve() for a in argv] or default + [ROOT / "install.py", ROOT / "preload.py"]
    projects = [p for p in UPSTREAM if available(p)]
    missing = sorted(set(UPSTREAM) - set(projects))
    if missing:
        print(f"not compared (no mirror under {mirrors()}): {', '.join(missing)}")
    upstream = {p: upstream_lines(p) for p in projects}
    for f in project_files(targets):
        o = overlap(f, upstream)
        project, n = o.worst()
        if n or o.signatures:
            print(f"{n:4d}/{o.long_lines:<4d} equal ({project}), {o.signatures} signatures, "
                  f"longest run {o.longest_run}  {f.relative_to(ROOT)}")
            for line in o.equal.get(project, [])[:int(os.environ.get("SHOW", "0"))]:
                print("        " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
