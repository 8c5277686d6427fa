"""Inspect spans and alignments from the command line.

    python -m distillkit.spans inspect --text "The cat sat." --parser spacy --tokenizer PATH [--tokenizer PATH2]
    python -m distillkit.spans inspect --file data/vicuna/valid.jsonl --field output --limit 2 --parser words \\
        --tokenizer PATH --json
    python -m distillkit.spans align --tokenizer A --tokenizer B --text "Hi  there 😀" [--json]

``inspect`` prints each span (characters, kind, the token indices it maps to on each tokenizer);
``align`` prints the co-segmentation groups of two tokenizers. ``--json`` prints a JSON list instead
of tables. Errors are one line on stderr, exit code 2. Texts are tokenized as data preparation
tokenizes them (``distillkit.data.encode.tokenize_text``): a literal special-token string in ``--text``
is text, and the only special tokens are the tokenizer's own additions (a BOS), never aligned.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from distillkit.spans.membership import MEMBERSHIP_RULES, token_membership
from distillkit.spans.parsers import PARSERS, WORD_UNITS


class UsageError(Exception):
    """A user mistake: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _build_cli() -> argparse.ArgumentParser:
    cli = _Parser(prog="python -m distillkit.spans", description=__doc__.split("\n\n")[0])
    sub = cli.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ins = sub.add_parser("inspect", help="parse texts and show each span's tokens on each tokenizer")
    source = ins.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to parse")
    source.add_argument("--file", help="a JSONL file whose rows hold the texts")
    ins.add_argument("--field", default="output", help="the field of each --file row (default: output)")
    ins.add_argument("--limit", type=int, default=3, help="rows of --file to show (default: 3)")
    ins.add_argument(
        "--parser", default="spacy", choices=sorted(PARSERS), help="span parser (default: spacy)"
    )
    ins.add_argument("--word-units", choices=WORD_UNITS, help="word units (default: the parser's own)")
    ins.add_argument("--rule", default="reference", choices=MEMBERSHIP_RULES, help="token membership rule")
    ins.add_argument("--tokenizer", action="append", required=True, help="tokenizer folder (repeatable)")
    ins.add_argument("--json", action="store_true", help="print JSON instead of tables")

    ali = sub.add_parser("align", help="co-segmentation groups of two tokenizers on one text")
    ali.add_argument("--text", required=True, help="the text to tokenize")
    ali.add_argument(
        "--tokenizer", action="append", required=True, help="tokenizer folder (give exactly two)"
    )
    ali.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return cli


def _load_tokenizers(paths: list[str]) -> dict[str, Any]:
    """``{display name: tokenizer}``; the name is the folder's name (made unique)."""
    for path in paths:
        if not Path(path).is_dir():
            raise UsageError(
                f"tokenizer folder {path!r} does not exist (give a folder saved by save_pretrained)"
            )
    from transformers import AutoTokenizer

    named: dict[str, Any] = {}
    for path in paths:
        name = Path(path).resolve().name or path
        while name in named:
            name += "'"
        try:
            named[name] = AutoTokenizer.from_pretrained(path)
        except Exception as err:  # transformers raises several types for a bad folder
            raise UsageError(f"cannot load a tokenizer from {path!r}: {err}".splitlines()[0]) from err
    return named


def _encode(tokenizer: Any, text: str) -> tuple[list[tuple[int, int]], list[bool], list[str]]:
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{type(tokenizer).__name__} has no character offsets (a fast tokenizer is needed)")
    from distillkit.data.encode import tokenize_text

    # as data preparation tokenizes text: the text's characters are text (a literal "<|endoftext|>" is
    # not the EOS id), the only special tokens are the tokenizer's own additions (a BOS)
    tokens = tokenize_text(tokenizer, text, add_special_tokens=True)
    return tokens.offsets, [not s for s in tokens.special], tokenizer.convert_ids_to_tokens(tokens.ids)


def _read_texts(args: argparse.Namespace) -> list[str]:
    if args.text is not None:
        return [args.text]
    from distillkit.utils.io import read_jsonl

    if not Path(args.file).is_file():
        raise UsageError(f"--file {args.file!r} does not exist")
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    rows = read_jsonl(args.file)[: args.limit]
    texts = []
    for n, row in enumerate(rows):
        if args.field not in row:
            raise UsageError(f"row {n} of {args.file} has no field {args.field!r}; fields: {', '.join(row)}")
        value = row[args.field]
        texts.append(value[0] if isinstance(value, list) else str(value))
    return texts


def _inspect(args: argparse.Namespace) -> list[dict[str, Any]]:
    from distillkit.spans.cache import SpanCache
    from distillkit.spans.parsers import build_parser

    settings = {} if args.word_units is None else {"word_units": args.word_units}
    try:  # cheap checks first: building a parser validates its settings (models load on first parse)
        parser = build_parser(args.parser, **settings)
    except (ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from err
    texts = _read_texts(args)
    tokenizers = _load_tokenizers(args.tokenizer)
    all_spans = SpanCache().get_or_parse(parser, texts)

    records = []
    for n, (text, spans) in enumerate(zip(texts, all_spans)):
        per_tok = {}
        for name, tok in tokenizers.items():
            offsets, valid, strings = _encode(tok, text)
            per_tok[name] = (token_membership(spans, offsets, valid, rule=args.rule), strings)
        for s, span in enumerate(spans):
            records.append(
                {
                    "text_index": n,
                    "start": span.start,
                    "end": span.end,
                    "text": text[span.start : span.end],
                    "kind": span.kind,
                    "tokens": {name: members[s] for name, (members, _) in per_tok.items()},
                    "token_strings": {
                        name: [strings[t] for t in members[s]] for name, (members, strings) in per_tok.items()
                    },
                }
            )
    return records


def _align(args: argparse.Namespace) -> list[dict[str, Any]]:
    from distillkit.spans.align import cosegment

    if len(args.tokenizer) != 2:
        raise UsageError(f"align needs exactly two --tokenizer folders, got {len(args.tokenizer)}")
    tokenizers = _load_tokenizers(args.tokenizer)
    (name_a, tok_a), (name_b, tok_b) = tokenizers.items()
    off_a, valid_a, str_a = _encode(tok_a, args.text)
    off_b, valid_b, str_b = _encode(tok_b, args.text)
    return [
        {
            "start": g.start,
            "end": g.end,
            "text": args.text[g.start : g.end],
            "kind": "aligned",
            "tokens": {name_a: g.tokens_a, name_b: g.tokens_b},
            "token_strings": {name_a: [str_a[t] for t in g.tokens_a], name_b: [str_b[t] for t in g.tokens_b]},
        }
        for g in cosegment(off_a, valid_a, off_b, valid_b)
    ]


def _print_table(records: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    names = list(records[0]["tokens"]) if records else []
    table = Table(title=title, show_lines=False)
    for column in ["#", "kind", "chars", "text", *names]:
        table.add_column(column, overflow="fold")
    for n, rec in enumerate(records):
        cells = [
            f"{' '.join(f'{t}:{s!r}' for t, s in zip(rec['tokens'][name], rec['token_strings'][name]))}"
            or "—"
            for name in names
        ]
        prefix = f"{rec['text_index']}." if "text_index" in rec else ""
        table.add_row(f"{prefix}{n}", rec["kind"], f"{rec['start']}-{rec['end']}", repr(rec["text"]), *cells)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for usage errors)."""
    try:
        args = _build_cli().parse_args(argv)
        records = _inspect(args) if args.command == "inspect" else _align(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=1))
    else:
        title = f"{args.command}: {len(records)} {'groups' if args.command == 'align' else 'spans'}"
        _print_table(records, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
