"""Check the relative links of the project's Markdown: every file and every #anchor exists.

    python3 scripts/check_links.py              # README.md, docs/*.md, benchmarks/RESULTS.md
    python3 scripts/check_links.py FILE.md ...  # these files only

For each inline link or image (`[text](path)`, `[text](path#anchor)`, `![alt](path)`), each
reference definition (`[id]: path`) and each `<img src="...">`, outside fenced code blocks, inline
code and HTML comments: the path must exist (relative to the file, or to the repository root when
it starts with `/`), and an anchor into a Markdown file (the same one when the link is only
`#anchor`) must be the GitHub slug of one of its headings (lowercase, punctuation other than `-`
and `_` removed, spaces to `-`, `-1`, `-2`, ... for repeated headings) or an HTML `id`/`name`.
Absolute URLs (`https:`, `mailto:`, `//host`) are not checked: no network is used.

Each broken link is printed as `file:line: target: why`; the exit code is 1 if there is any.
Standard library only, Python 3.9+.
"""

from __future__ import annotations

import re
import sys
from functools import cache
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parent.parent

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)*?)(?<!`)\1(?!`)", re.DOTALL)
# the target of an inline link or image: `](target)` or `](target "title")`, target maybe in <>
INLINE = re.compile(
    r"\]\(\s*(<[^<>\n]*>|(?:[^\s()<>]|\([^\s()]*\))*)"
    r"""(?:\s+(?:"[^"\n]*"|'[^'\n]*'|\([^()\n]*\)))?\s*\)"""
)
REFERENCE = re.compile(r"^ {0,3}\[[^\]\n]+\]:[ \t]*(<[^<>\n]*>|\S+)", re.MULTILINE)
IMG_SRC = re.compile(r"""<img\b[^>]*?\bsrc\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"""<a\b[^>]*?\b(?:id|name)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def blank(match: re.Match[str]) -> str:
    """The matched text with every character but newlines replaced by a space (keeps offsets)."""
    return re.sub(r"[^\n]", " ", match.group(0))


def prose(text: str) -> str:
    """The text with fenced code blocks, HTML comments and inline code blanked out, with the same
    length and line breaks, so that offsets still give line numbers."""
    lines = text.split("\n")
    fence: str | None = None
    for i, line in enumerate(lines):
        found = FENCE.match(line)
        if fence is None:
            if found and not (found.group(1)[0] == "`" and "`" in found.group(2)):
                fence = found.group(1)
                lines[i] = " " * len(line)
        else:
            closing = found is not None and found.group(2).strip() == ""
            if closing and found.group(1)[0] == fence[0] and len(found.group(1)) >= len(fence):
                fence = None
            lines[i] = " " * len(line)
    text = "\n".join(lines)
    text = COMMENT.sub(blank, text)
    return CODE_SPAN.sub(blank, text)


def heading_text(raw: str) -> str:
    """A heading's text as GitHub renders it: links and images as their text, no HTML tags."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"\\(.)", r"\1", text).strip()


def slug(text: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but `-` and `_` removed, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor a Markdown file has: its headings' slugs (repeats numbered) and HTML ids."""
    raw = path.read_text(encoding="utf-8")
    text = prose(raw)
    found: set[str] = set()
    seen: dict[str, int] = {}

    def add(title: str) -> None:
        base = slug(heading_text(title))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")

    # headings are read from the text with code blocks blanked, but with their inline code kept
    # (its characters are part of the slug)
    raw_lines, lines = raw.split("\n"), text.split("\n")
    previous = ""
    for number, line in enumerate(lines):
        atx = ATX.match(raw_lines[number]) if ATX.match(line) else None
        if atx:
            add(atx.group(2) or "")
            previous = ""
            continue
        if SETEXT.match(line) and previous.strip() and not previous.lstrip().startswith("|"):
            add(raw_lines[number - 1])
            previous = ""
            continue
        previous = line
    found.update(m.group(1) for m in HTML_ANCHOR.finditer(text))
    return frozenset(found)


def targets(text: str) -> list[tuple[int, str]]:
    """(offset, target) of every link, image and reference definition in the prose."""
    found = [(m.start(1), m.group(1)) for m in INLINE.finditer(text)]
    found += [(m.start(1), m.group(1)) for m in REFERENCE.finditer(text)]
    found += [(m.start(1), m.group(1)) for m in IMG_SRC.finditer(text)]
    return sorted((offset, target.strip("<>")) for offset, target in found)


def problem(source: Path, target: str) -> str | None:
    """Why a link from `source` to `target` is broken, or None."""
    if not target:
        return "empty link"
    if SCHEME.match(target) or target.startswith("//"):
        return None  # an absolute URL: not checked (no network)
    path_part, _, anchor = target.partition("#")
    path_part = unquote(path_part.split("?", 1)[0])
    if not path_part:
        file = source
    elif path_part.startswith("/"):
        file = ROOT / path_part.lstrip("/")
    else:
        file = source.parent / path_part
    if not file.exists():
        return f"no such file: {display(file)}"
    if anchor and file.is_file() and file.suffix.lower() in {".md", ".markdown"}:
        anchor = unquote(anchor)
        if anchor not in anchors(file.resolve()):
            return f"no heading or anchor #{anchor} in {display(file)}"
    return None


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def check(path: Path) -> tuple[int, list[str]]:
    """The number of links in a file, and a line for each broken one."""
    text = prose(path.read_text(encoding="utf-8"))
    broken = []
    found = targets(text)
    for offset, target in found:
        why = problem(path, target)
        if why:
            line = text.count("\n", 0, offset) + 1
            broken.append(f"{display(path)}:{line}: {target}: {why}")
    return len(found), broken


def default_files() -> list[Path]:
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [ROOT / "README.md", *docs, ROOT / "benchmarks" / "RESULTS.md"]


def main(argv: list[str]) -> int:
    files = [Path(arg).resolve() for arg in argv] or default_files()
    total, broken = 0, []
    for path in files:
        if not path.is_file():
            broken.append(f"{display(path)}:0: {display(path)}: no such file to check")
            continue
        count, problems = check(path)
        total += count
        broken += problems
    for line in broken:
        print(line)
    if broken:
        print(f"{len(broken)} broken link(s) of {total} in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"Links: {total} in {len(files)} files, every file and anchor found")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
