"""The command line before docopt sees it: rsync's short options and rclone's
aliases become fitsync's long options, and an unknown option is named, with
the closest known one, instead of docopt's internals."""

from __future__ import annotations

import re

from fitsync.errors import UsageError

# rsync's and rclone's spellings of fitsync's options (each applies where the command has the long option).
SHORT = {"n": "--dry-run", "i": "--itemize", "c": "--checksum", "v": "--verbose", "q": "--quiet",
         "P": "--progress", "j": "--jobs", "V": "--version", "h": "--help"}
ALIASES = {"--itemize-changes": "--itemize", "--transfers": "--jobs"}

_OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(=)?")
_REPEATABLE = re.compile(r"\[(--[a-z][a-z0-9-]*)(?:=[A-Z]+)?\]\.\.\.")


def known_options(doc: str) -> tuple[set[str], set[str]]:
    """(every long option of a command's docstring, those that take a value)."""
    names, valued = set(), set()
    for match in _OPTION.finditer(doc):
        names.add(match.group(1))
        if match.group(2):
            valued.add(match.group(1))
    return names | {"--help", "--version"}, valued


def usage_line(doc: str) -> str:
    """``usage: fitsync mirror SRC DST [options]`` from the docstring's first usage line."""
    first = doc.split("Usage:", 1)[1].strip().splitlines()[0].strip()
    words = first.split(" [", 1)[0]
    return f"usage: {words} [options]  ('{' '.join(words.split()[:2])} --help' lists them)"


def normalize(argv: list[str], doc: str) -> tuple[list[str], int]:
    """``argv`` with short options and aliases spelled as this command's long
    options, and how many times --itemize was given (``-ii`` lists unchanged
    files too). Raises UsageError naming an unknown option."""
    names, valued = known_options(doc)
    out: list[str] = []
    itemize = 0
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            out.extend(argv[i - 1:])
            break
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            name = ALIASES.get(name, name)
            if name not in names:
                raise UsageError(_unknown(name, names) + "\n" + usage_line(doc))
            if name == "--itemize":
                itemize += 1
                if itemize > 1:
                    continue
            if name in valued and not eq and i < len(argv):
                eq, value = "=", argv[i]
                i += 1
            out.append(name + eq + value)
            continue
        if word.startswith("-") and len(word) > 1 and not _is_number(word):
            consumed, expanded = _short_cluster(word, argv[i] if i < len(argv) else None, names, doc)
            i += consumed
            for long in expanded:
                itemize += long == "--itemize"
                if long != "--itemize" or itemize == 1:
                    out.append(long)
            continue
        out.append(word)
    return _last_wins(out, set(_REPEATABLE.findall(doc))), itemize


def _last_wins(words: list[str], repeatable: set[str]) -> list[str]:
    """An option given twice that takes one value (or is a flag): the last
    one counts, as in rsync (docopt would refuse the pair)."""
    last = {}
    for k, word in enumerate(words):
        if word.startswith("--"):
            last[word.partition("=")[0]] = k
    return [w for k, w in enumerate(words)
            if not w.startswith("--") or w.partition("=")[0] in repeatable or last[w.partition("=")[0]] == k]


def _short_cluster(word: str, following: str | None, names: set[str], doc: str) -> tuple[int, list[str]]:
    """``-nc``, ``-j4``, ``-j 4``: (extra words consumed, the long options)."""
    expanded: list[str] = []
    letters = word[1:]
    for k, letter in enumerate(letters):
        long = SHORT.get(letter)
        if long is None or long not in names:
            known = " ".join(f"-{s}" for s, name in SHORT.items() if name in names)
            raise UsageError(f"unknown option -{letter}" + (f"; short options here: {known}" if known else "")
                             + "\n" + usage_line(doc))
        if long == "--jobs":
            rest = letters[k + 1:]
            if rest:
                return 0, expanded + [f"--jobs={rest}"]
            if following is None:
                raise UsageError("-j needs a number of jobs, e.g. -j 4")
            return 1, expanded + [f"--jobs={following}"]
        expanded.append(long)
    return 0, expanded


def _unknown(name: str, names: set[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    return f"unknown option {name}" + (f"; did you mean {close[0]}?" if close else "")


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True
