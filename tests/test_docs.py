"""The documentation cannot rot: README.md and the manual (docs/*.md) checked against the code.

- every ``main.py`` command they show (in a code block, or in `inline code`) parses with main.py's
  own parser and makes a configuration that main.py would accept, so a renamed or removed flag,
  a value out of its choices or a recipe that no longer exists fails here;
- every other ``--flag`` they name in inline code is a flag of main.py;
- every relative link and image points to a file that exists, and a ``#section`` to a heading of it;
- every path under bench/, tests/, trainer/, docs/ or .ci/ they name exists (BENCHMARKS.md too);
- README.md stays a front door: at most 200 lines, its first commands those .ci/run runs, a link to
  every page of the manual; each page opens with a two-line summary and its commands;
- ``--help`` puts every flag in one of its named sections, each naming pages that exist.
"""
import contextlib
import glob
import io
import os
import re
import shlex

import pytest

import main
from configure import ConfigError
from trainer.app import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
DOCS = [README] + PAGES  # what a user reads as instructions
ALL_DOCS = DOCS + [os.path.join(ROOT, "BENCHMARKS.md")]  # records too: their paths and links
MAX_README_LINES = 200

FENCE = re.compile(r"^(```|~~~)")
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REFERENCE = re.compile(r"^\[([^\]]+)\]:\s*(\S+)")  # [name]: target, for [text][name]
REFERENCE_USE = re.compile(r"\]\[([^\]]+)\]")
REPO_PATH = re.compile(r"(?<![\w./<-])((?:bench|tests|trainer|docs|\.ci)/[\w./-]*)")
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")
# Inline code that runs another program: its flags are that program's, not main.py's.
OTHER_PROGRAMS = ("bench/", "pip ", "pytest", "tensorboard --logdir", "torchrun")


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def split_fences(text: str):
    """(code lines, prose lines) of a markdown text: lists of (line number, line); a code line
    ending in a backslash is joined with the next, as a shell would."""
    code, prose, inside, pending = [], [], False, None
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            inside = not inside
            continue
        if not inside:
            prose.append((number, line))
            continue
        if pending:
            line = pending[1] + " " + line.strip()
            number = pending[0]
        if line.rstrip().endswith("\\"):
            pending = (number, line.rstrip()[:-1])
            continue
        pending = None
        code.append((number, line))
    return code, prose


def spans(prose) -> list:
    """(line number, text) of each piece of inline code in the prose lines; a piece may run over a
    line break, as markdown allows."""
    text = "\n".join(line for _, line in prose)
    starts = [number for number, _ in prose]
    found = []
    for m in SPAN.finditer(text):
        line = starts[text.count("\n", 0, m.start())]
        found.append((line, " ".join(m.group(1).split())))
    return found


def main_arguments(command: str):
    """The arguments after main.py in a shell command line, or None if it does not run main.py.
    A ``...`` (more flags of the reader's choice) is left out."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "main.py" or word.endswith("/main.py"):
            args = [w for w in words[i + 1:] if w != "..."]
            runs = args or {"python", "torchrun"} & set(words[:i])  # not the file named alone
            return args if runs else None
    return None


def commands():
    """(where, arguments) of every main.py command in README.md and docs/*.md."""
    found = []
    for path in DOCS:
        code, prose = split_fences(read(path))
        for number, line in code + spans(prose):
            args = main_arguments(line)
            if args is not None:
                found.append((f"{rel(path)}:{number}", args))
    return found


COMMANDS = commands()


def check_command(args) -> None:
    """What main.main does with a command line before it reads any file: parse it, apply the
    recipe, check every value and, for training, that each network flag shapes the network."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser = main.build_parser()
            parser.allow_abbrev = False  # a doc must spell a flag out: --max_epo is not --max_epoch
            parsed = parser.parse_args(args)
        except SystemExit as e:  # --help prints and exits 0; a bad flag exits 2 with usage
            complaint = (err.getvalue().strip().splitlines() or ["exit 0"])[-1]  # not the usage
            assert e.code == 0 and ("--help" in args or "-h" in args), complaint
            return
    explicit = main.explicit_flags(args)
    config = main.config_from_args(parsed)
    config.apply_recipe(explicit)
    if parsed.mode == "train":
        config.check_applicable(explicit)
    if parsed.mode == "sweep":
        assert parsed.sweep, "--mode sweep needs --sweep KEY VALUE ..."
        sweep.parse(parsed.sweep)
    config.validate()


def test_the_docs_show_commands():
    # Guards the extraction itself: if it found nothing, every test below would pass vacuously.
    where = {w.split(":")[0] for w, _ in COMMANDS}
    assert len(COMMANDS) > 50 and "README.md" in where and len(where) >= 8, where


@pytest.mark.parametrize("where,args", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_main_py_command_parses(where, args):
    try:
        check_command(args)
    except (AssertionError, ConfigError) as e:
        pytest.fail(f"{where}: python main.py {shlex.join(args)}\n  {e}")


def test_a_renamed_flag_would_be_caught():
    # The check above is only worth something if it refuses what main.py refuses.
    for bad in (["--mode", "train", "--max_epochs", "3"], ["--max_epo", "3"], ["--recipe", "quick"],
                ["--mode", "train", "--batch_norm"], ["--warmup_epochs", "300"],
                ["--mode", "sweep", "--sweep", "data_dir", "a", "b"]):
        with pytest.raises((AssertionError, ConfigError)):
            check_command(bad)
    check_command(["--mode", "train", "--max_epoch", "3", "--lr_decay_epochs", "2"])


@pytest.mark.parametrize("path", DOCS, ids=rel)
def test_flags_named_in_inline_code_exist(path):
    parser_flags = {flag for flags in help_sections().values() for flag in flags}
    _, prose = split_fences(read(path))
    unknown = [f"line {n}: --{name} in `{text}`" for n, text in spans(prose)
               if main_arguments(text) is None and not any(p in text for p in OTHER_PROGRAMS)
               for name in FLAG.findall(text) if f"--{name}" not in parser_flags]
    assert not unknown, f"{rel(path)} names flags main.py does not have:\n" + "\n".join(unknown)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: str) -> set:
    _, prose = split_fences(read(path))
    return {slug(line.lstrip("#")) for _, line in prose if re.match(r"^#{1,6} ", line)}


@pytest.mark.parametrize("path", ALL_DOCS, ids=rel)
def test_links_and_images_point_to_files_that_exist(path):
    _, prose = split_fences(read(path))
    broken, defined = [], {}
    for number, line in prose:
        m = REFERENCE.match(line)
        if m:
            defined[m.group(1).lower()] = (number, m.group(2))
    for number, line in prose:
        broken += [f"line {number}: [{name}] is used but not defined"
                   for name in REFERENCE_USE.findall(line) if name.lower() not in defined]
    for number, line in prose + [(n, f"[]({t})") for n, t in defined.values()]:
        for target in LINK.findall(line):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:: not checked here
                continue
            file, _, fragment = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(resolved):
                broken.append(f"line {number}: {target} ({rel(resolved)} does not exist)")
            elif fragment and resolved.endswith(".md") and fragment not in anchors(resolved):
                broken.append(f"line {number}: {target} (no heading #{fragment} in "
                              f"{rel(resolved)})")
    assert not broken, f"{rel(path)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("path", ALL_DOCS, ids=rel)
def test_named_repository_paths_exist(path):
    missing = sorted({m.rstrip(".,:;") for m in REPO_PATH.findall(read(path))
                      if not os.path.exists(os.path.join(ROOT, m.rstrip(".,:;")))})
    assert not missing, f"{rel(path)} names paths that do not exist: {missing}"


def test_readme_is_a_front_door():
    text = read(README)
    assert len(text.splitlines()) <= MAX_README_LINES
    code, _ = split_fences(text)
    # Its first commands are those CI runs (.ci/run: "install what the README says, then run the
    # README's test command"), quiet flags aside.
    ci = [" ".join(w for w in line.split() if w != "-q")
          for line in read(os.path.join(ROOT, ".ci", "run")).splitlines()]
    first = [line.strip() for _, line in code[:3]]
    assert first[0] == "pip install -r requirements.txt" and first[0] in ci, first
    assert first[1].startswith("python main.py --mode train"), first
    assert first[2] == "python -m pytest" and ci[-1] == first[2], (first, ci[-1])
    linked = {os.path.normpath(os.path.join(ROOT, t.partition("#")[0])) for t in LINK.findall(text)}
    assert not [rel(p) for p in PAGES if p not in linked], "pages of docs/ the README does not link"
    assert os.path.join(ROOT, "docs", "curves.png") in linked


@pytest.mark.parametrize("path", PAGES, ids=rel)
def test_each_page_opens_with_a_summary_and_its_commands(path):
    lines = read(path).splitlines()
    assert lines[0].startswith("# ") and lines[1] == "", lines[:2]
    summary = lines[2:lines.index("", 2)]
    assert 1 <= len(summary) <= 2, f"{rel(path)}: the summary is {len(summary)} lines"
    assert lines[2 + len(summary) + 1].startswith("```"), f"{rel(path)}: no commands after it"


def help_sections() -> dict:
    """--help's section title -> the flags listed under it."""
    sections, current = {}, None
    for line in main.build_parser().format_help().splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
            sections[current] = []
        elif current and re.match(r"^  -", line):  # "  -h, --help   show ..."
            names = line.strip().split("  ")[0].split(", ")
            sections[current] += [name.split()[0] for name in names]
    return sections


def test_help_groups_every_flag_in_a_named_section():
    sections = help_sections()
    assert list(sections)[1:] == list(main.HELP_SECTIONS), list(sections)
    assert sections.get("options") == ["-h", "--help"] and main.OTHER_SECTION not in sections, \
        f"flags outside the named sections: {sections.get(main.OTHER_SECTION)}"
    for title, names in main.HELP_SECTIONS.items():
        stale = [name for name in names if f"--{name}" not in sections[title]]
        assert not stale, f"{title} names flags main.py does not have: {stale}"
        pages = re.findall(r"[\w/.-]+\.md", title)
        assert pages and all(os.path.exists(os.path.join(ROOT, p)) for p in pages), title
