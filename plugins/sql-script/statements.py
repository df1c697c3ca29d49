"""Splits a SQL script into statements the way psql does: at semicolons outside quotes ('...',
E'...', "..."), dollar quotes ($$...$$, $tag$...$tag$), comments (-- and nested /* */) and
SQL-standard routine bodies (CREATE FUNCTION ... BEGIN ATOMIC ...; ...; END).

Also refuses what would break "one transaction, all or nothing": transaction control
(BEGIN, COMMIT, ROLLBACK, ...) and psql meta-commands (\\connect, \\i, ...), which are not SQL.
"""
import re

WORD = re.compile(r"[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*")
DOLLAR_TAG = re.compile(r"\$([A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")
TRANSACTION_CONTROL = {"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "ABORT"}


class ScriptError(Exception):
    pass


def _is_word_char(char):
    return char.isalnum() or char in "_$" or ord(char) >= 0x80


def _line(text, index):
    return text.count("\n", 0, index) + 1


def _skip_quoted(text, i, quote, backslashes):
    """Index just past the quoted text opening at i ('' or \"\" inside is an escaped quote)."""
    j = i + 1
    while True:
        if j >= len(text):
            kind = "identifier" if quote == '"' else "string"
            raise ScriptError(f"unterminated quoted {kind} starting at line {_line(text, i)}")
        char = text[j]
        if backslashes and char == "\\":
            j += 2
        elif char == quote:
            if text.startswith(quote * 2, j):
                j += 2
            else:
                return j + 1
        else:
            j += 1


def _skip_block_comment(text, i):
    depth, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif text.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    raise ScriptError(f"unterminated /* comment starting at line {_line(text, i)}")


def _opens_block(words):
    """psql's rule: in CREATE [OR REPLACE] FUNCTION/PROCEDURE, BEGIN and CASE open a block that
    END closes, and semicolons inside it do not end the statement."""
    routine = (["FUNCTION"], ["PROCEDURE"])
    return words[:1] == ["CREATE"] and (
        words[1:2] in routine or (words[1:3] == ["OR", "REPLACE"] and words[3:4] in routine))


def split(text):
    """[(statement text, line number of its start)], empty statements left out."""
    statements = []
    start = i = 0
    first = None          # index of the statement's first character that is not blank or comment
    words = []            # the statement's first four words, upper case
    depth = 0             # BEGIN ATOMIC / CASE ... END nesting in routine bodies

    def finish(end):
        if first is not None:
            statements.append((text[first:end].rstrip(), _line(text, first)))

    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if text.startswith("--", i):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        if text.startswith("/*", i):
            i = _skip_block_comment(text, i)
            continue
        if char == ";" and depth == 0:
            finish(i)
            start, first, words = i + 1, None, []
            i += 1
            continue
        if first is None:
            first = i
            if char == "\\":
                raise ScriptError(f"line {_line(text, i)}: psql meta-commands ({text[i:i + 12].split()[0]}) "
                                  "are not SQL; only SQL statements can run here")
        if char in "'\"":
            # E'...' strings treat backslash as an escape; '...' does not (standard strings).
            escape = char == "'" and i > start and text[i - 1] in "eE" and (
                i - 1 == start or not _is_word_char(text[i - 2]))
            i = _skip_quoted(text, i, char, escape)
            continue
        if char == "$" and not (i > 0 and _is_word_char(text[i - 1])):
            tag = DOLLAR_TAG.match(text, i)
            if tag:
                end = text.find(tag.group(0), tag.end())
                if end < 0:
                    raise ScriptError(f"unterminated dollar quote {tag.group(0)} starting at line "
                                      f"{_line(text, i)}")
                i = end + len(tag.group(0))
                continue
        word = WORD.match(text, i)
        if word:
            upper = word.group(0).upper()
            if len(words) < 4:
                words.append(upper)
            if upper in ("BEGIN", "CASE") and _opens_block(words):
                depth += 1
            elif upper == "END" and depth > 0:
                depth -= 1
            i = word.end()
            continue
        i += 1
    finish(len(text))
    return statements


def check_single_transaction(statements):
    """Refuse statements that would end the script's one transaction part of the way."""
    for number, (statement, line) in enumerate(statements, 1):
        words = [w.upper() for w in WORD.findall(statement[:200])]
        verb = words[0] if words else ""
        if (verb in TRANSACTION_CONTROL and not (verb == "ROLLBACK" and "TO" in words)) or (
                verb == "PREPARE" and words[1:2] == ["TRANSACTION"]):
            raise ScriptError(f"statement {number} (line {line}) is transaction control ({verb}): the "
                              "whole script already runs in one transaction; remove it")
