"""How sql-script splits a script into statements (plugins/sql-script/statements.py): like
psql, at semicolons outside quotes, comments and routine bodies; what it refuses."""
import importlib.util
import re

import pytest

from .images import ROOT

_spec = importlib.util.spec_from_file_location("sql_script_statements",
                                               ROOT / "plugins" / "sql-script" / "statements.py")
statements = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(statements)


def texts(script):
    return [text for text, _ in statements.split(script)]


def test_semicolons_inside_quotes_comments_and_bodies_do_not_split():
    script = ("INSERT INTO t VALUES ('a;b', 'it''s;', E'x\\';y', \"col;umn\", $$d;$$, $q$ $$; $q$);\n"
              "-- comment; not a statement\n"
              "/* outer /* inner; */ still comment; */ SELECT 1;\n"
              "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true "
              "THEN 2 END; END;\n"
              "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END;\n"
              "SELECT $1, a$b$ FROM t")
    assert texts(script) == [
        "INSERT INTO t VALUES ('a;b', 'it''s;', E'x\\';y', \"col;umn\", $$d;$$, $q$ $$; $q$)",
        "SELECT 1",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true "
        "THEN 2 END; END",
        "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC INSERT INTO t VALUES (1); END",
        "SELECT $1, a$b$ FROM t",
    ]


def test_each_statement_knows_its_first_line_and_empty_ones_are_dropped():
    assert statements.split("\n\n-- seed\nSELECT 1;;\n  ;\nSELECT\n2;\n-- trailing comment\n") == [
        ("SELECT 1", 4), ("SELECT\n2", 6)]
    assert statements.split("-- only a comment\n") == []


def test_a_plain_string_keeps_its_backslash():
    # standard_conforming_strings: in '...' a backslash is a character, so the quote ends here.
    assert texts(r"SELECT 'a\'; SELECT 2") == [r"SELECT 'a\'", "SELECT 2"]


@pytest.mark.parametrize(("script", "message"), [
    ("SELECT 1;\nSELECT 'open", "unterminated quoted string starting at line 2"),
    ('SELECT "open', "unterminated quoted identifier starting at line 1"),
    ("SELECT 1;\n\nSELECT $x$ body", "unterminated dollar quote $x$ starting at line 3"),
    ("/* open /* nested */", "unterminated /* comment starting at line 1"),
    ("SELECT 1;\n\\connect other\nSELECT 2;", "line 2: psql meta-commands (\\connect) are not SQL"),
])
def test_scripts_that_cannot_be_split_are_refused_with_the_line(script, message):
    with pytest.raises(statements.ScriptError, match=re.escape(message)):
        statements.split(script)


@pytest.mark.parametrize("control", ["BEGIN", "begin transaction", "START TRANSACTION", "COMMIT", "end",
                                     "ROLLBACK", "abort", "PREPARE TRANSACTION 'x'"])
def test_transaction_control_is_refused(control):
    with pytest.raises(statements.ScriptError, match=r"statement 2 \(line 2\) is transaction control"):
        statements.check_single_transaction(statements.split(f"SELECT 1;\n{control};\nSELECT 2;"))


def test_savepoints_and_routines_are_not_transaction_control():
    script = ("SAVEPOINT s; ROLLBACK TO SAVEPOINT s; RELEASE s; PREPARE q AS SELECT 1;\n"
              "DO $$ BEGIN PERFORM 1; END $$;\n"
              "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;")
    statements.check_single_transaction(statements.split(script))  # no error
