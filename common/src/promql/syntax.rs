//! Turning query text into an `Expr`: limits checked before the parser runs,
//! the parser itself (`promql-parser`), and positions for its errors.
//!
//! Everything here works on the tokens of the parser's own lexer
//! (`promql_parser::parser::lexer`, read through `lrpar`'s lexer traits):
//! the limits count them, and error positions point at them. There is no
//! second tokenizer or grammar here; the parser's AST is the only thing
//! evaluated.
//!
//! `promql-parser` reports grammar errors without a position ("invalid
//! promql query"). For those, a position is given only where the tokens
//! alone show the mistake (an operator with no operand after it, or a query
//! that starts with one); otherwise the message says what to check.
//! For lexer errors the position is found by running the parser's lexer on
//! prefixes of the query.

use std::panic::{catch_unwind, AssertUnwindSafe};

use lrpar::{Lexeme as _, Lexer as _};
use promql_parser::parser::token::*;
use promql_parser::parser::{self, Expr};

use super::{ErrorKind, Position, PromqlError};

/// Longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Most operators, parentheses, brackets and modifiers in one query; bounds
/// the depth of the tree before the parser builds it.
pub const MAX_NESTING_TOKENS: usize = 1000;
/// Deepest expression tree evaluated.
pub const MAX_DEPTH: usize = 200;
/// Longest duration in a query (seconds; about 31,700 years).
const MAX_DURATION_SECS: f64 = 1e12;

/// What `promql-parser` says about every grammar error.
const INVALID_QUERY: &str = "invalid promql query";
/// Our message for a grammar error whose place the tokens do not show.
const INVALID_SYNTAX: &str = "cannot parse the query: invalid PromQL syntax (check parentheses, quotes, operators and durations)";

/// Parses `query` with `promql-parser`, after checking the limits that keep
/// the parser and the evaluator from running out of stack or panicking.
pub(super) fn parse_expr(query: &str) -> Result<Expr, PromqlError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(PromqlError::new(ErrorKind::Limit, format!("query is too long: {} bytes, at most {MAX_QUERY_BYTES}", query.len())));
    }
    // The parser's lexer first: its messages are the ones users know.
    let tokens = match lex(query) {
        Ok(tokens) => tokens,
        Err(message) => {
            let at = lexer_error_offset(query, &message);
            return Err(PromqlError::parse(message, at.map(|o| position_of(query, o))));
        }
    };
    check_token_limits(query, &tokens)?;
    let parsed = catch_unwind(AssertUnwindSafe(|| parser::parse(query)));
    match parsed {
        Ok(Ok(expr)) => Ok(expr),
        Ok(Err(message)) => Err(explain_parser_error(query, &tokens, message)),
        Err(_) => Err(PromqlError::parse("the query could not be parsed (the parser failed on it)".to_string(), None)),
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn position_of(src: &str, offset: usize) -> Position {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    Position { line, column }
}

/// Where the parser's lexer fails with `message`: the shortest prefix on
/// which it fails the same way (found by bisection), as the offset of that
/// prefix's last character.
fn lexer_error_offset(query: &str, message: &str) -> Option<usize> {
    let bounds: Vec<usize> = query.char_indices().map(|(i, _)| i).skip(1).chain(std::iter::once(query.len())).collect();
    let fails = |end: usize| matches!(parser::lexer(&query[..end]), Err(m) if m == message);
    // Invariant: prefix `lo` (0 = empty) does not fail this way; `hi` does.
    let (mut lo, mut hi) = (0usize, bounds.len());
    if bounds.is_empty() || !fails(bounds[hi - 1]) {
        return None;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fails(bounds[mid - 1]) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    // Prefix number `hi` ends at bounds[hi - 1]; its last char starts at the
    // previous boundary.
    let end = bounds[hi - 1];
    Some(query[..end].char_indices().last().map(|(i, _)| i).unwrap_or(0))
}

/// Where the parser's lexer was when it made a token: inside `{...}`,
/// inside `[...]`, or neither. It lexes the inside of braces and brackets
/// differently (e.g. `or` and `!=` in braces belong to label matchers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Outside,
    Braces,
    Brackets,
}

/// One token of the parser's lexer: its id (a `token::T_*` constant) and
/// byte span.
#[derive(Clone, Copy, Debug)]
struct Token {
    id: TokenId,
    start: usize,
    end: usize,
    place: Place,
}

/// The tokens of the parser's lexer (without the end-of-input token), or
/// its error message.
fn lex(query: &str) -> Result<Vec<Token>, String> {
    let lexer = parser::lexer(query)?;
    let mut place = Place::Outside;
    let mut tokens = Vec::new();
    // On success the lexer holds no errors (it fails on the first one).
    for lexeme in lexer.iter().flatten() {
        let (id, span) = (lexeme.tok_id(), lexeme.span());
        if id == T_EOF {
            continue;
        }
        tokens.push(Token { id, start: span.start(), end: span.end(), place });
        place = match id {
            T_LEFT_BRACE => Place::Braces,
            T_LEFT_BRACKET => Place::Brackets,
            T_RIGHT_BRACE | T_RIGHT_BRACKET => Place::Outside,
            _ => place,
        };
    }
    Ok(tokens)
}

/// Tokens that add a level to the tree the parser builds (outside braces).
const NESTING: &[TokenId] = &[
    T_LEFT_PAREN,
    T_LEFT_BRACKET,
    T_AT,
    T_OFFSET,
    T_ADD,
    T_SUB,
    T_MUL,
    T_DIV,
    T_MOD,
    T_POW,
    T_EQLC,
    T_NEQ,
    T_LSS,
    T_LTE,
    T_GTR,
    T_GTE,
    T_LAND,
    T_LOR,
    T_LUNLESS,
    T_ATAN2,
];

fn check_token_limits(query: &str, tokens: &[Token]) -> Result<(), PromqlError> {
    let nesting = tokens.iter().filter(|t| t.place != Place::Braces && NESTING.contains(&t.id)).count();
    if nesting > MAX_NESTING_TOKENS {
        return Err(PromqlError::new(
            ErrorKind::Limit,
            format!("query is too complex: {nesting} operators, parentheses, brackets and modifiers, at most {MAX_NESTING_TOKENS}"),
        ));
    }
    // A number used as a duration (a range, or an offset) becomes a
    // `std::time::Duration` inside the parser, which cannot hold every float.
    for (i, t) in tokens.iter().enumerate() {
        if t.id != T_NUMBER {
            continue;
        }
        let before = |n: usize| i.checked_sub(n).map(|j| tokens[j].id);
        let after_offset = match before(1) {
            Some(T_OFFSET) => true,
            Some(T_ADD | T_SUB) => before(2) == Some(T_OFFSET),
            _ => false,
        };
        if !(t.place == Place::Brackets || after_offset) {
            continue;
        }
        let text = &query[t.start..t.end];
        if let Ok(v) = promql_parser::util::parse_str_radix(text) {
            if !(v.is_finite() && (0.0..=MAX_DURATION_SECS).contains(&v)) {
                return Err(PromqlError::parse(format!("duration out of range: {text}"), Some(position_of(query, t.start))));
            }
        }
    }
    Ok(())
}

/// The parser's message, with a position where one can be found, and
/// "unsupported function" for functions the parser does not know.
fn explain_parser_error(query: &str, tokens: &[Token], message: String) -> PromqlError {
    if let Some(name) = message.strip_prefix("unknown function with name '").and_then(|r| r.strip_suffix('\'')) {
        let at = tokens
            .windows(2)
            .find(|w| w[0].id == T_IDENTIFIER && &query[w[0].start..w[0].end] == name && w[1].id == T_LEFT_PAREN)
            .map(|w| position_of(query, w[0].start));
        return PromqlError { kind: ErrorKind::Unsupported, message: format!("unsupported function '{name}'"), position: at };
    }
    if message != INVALID_QUERY {
        // The parser's own words; those about the end of the input say where.
        let at = message.starts_with("unexpected end of input").then(|| position_of(query, query.len()));
        return PromqlError::parse(message, at);
    }
    match grammar_error_at(query, tokens) {
        Some((offset, message)) => PromqlError::parse(message, Some(position_of(query, offset))),
        None => PromqlError::parse(INVALID_SYNTAX.to_string(), None),
    }
}

/// Operators between two operands (outside braces).
const BINARY: &[TokenId] = &[T_ADD, T_SUB, T_MUL, T_DIV, T_MOD, T_POW, T_EQLC, T_NEQ, T_LSS, T_LTE, T_GTR, T_GTE];
/// Tokens no operand starts with (outside braces): not a valid query's
/// first token, nor the next one after an operator, `@`, `(` or `,`.
const NOT_AN_OPERAND: &[TokenId] = &[T_MUL, T_DIV, T_MOD, T_POW, T_EQLC, T_NEQ, T_LSS, T_LTE, T_GTR, T_GTE, T_AT, T_COMMA, T_RIGHT_PAREN];

/// Where a query the parser calls invalid goes wrong, when its tokens alone
/// show it: it starts with a token no operand starts with, or an operator
/// (or `@`, `(`, `,`) is followed by one, or an operator (or `@`) ends it.
/// Returns a byte offset and a message. Keywords are never judged here:
/// most of them can also be metric or label names.
fn grammar_error_at(query: &str, tokens: &[Token]) -> Option<(usize, String)> {
    let text = |t: &Token| &query[t.start..t.end];
    let first = tokens.first()?;
    if first.place == Place::Outside && NOT_AN_OPERAND.contains(&first.id) {
        return Some((first.start, format!("unexpected \"{}\" at the start of the query", text(first))));
    }
    for (i, t) in tokens.iter().enumerate() {
        if t.place == Place::Braces {
            continue;
        }
        let needs_operand = BINARY.contains(&t.id) || t.id == T_AT;
        let opens_list = matches!(t.id, T_LEFT_PAREN | T_COMMA);
        if !(needs_operand || opens_list) {
            continue;
        }
        match tokens.get(i + 1) {
            // An open parenthesis would be a lexer error; a list cannot end here either.
            None => return Some((query.len(), format!("unexpected end of input after \"{}\"", text(t)))),
            Some(next) if next.place == Place::Braces => {}
            // `f()`, `by ()` and `f(a,)` are fine.
            Some(next) if opens_list && next.id == T_RIGHT_PAREN => {}
            Some(next) if NOT_AN_OPERAND.contains(&next.id) => {
                return Some((next.start, format!("unexpected \"{}\" after \"{}\"", text(next), text(t))));
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(q: &str) -> PromqlError {
        parse_expr(q).expect_err(q)
    }

    #[test]
    fn lexer_errors_have_positions() {
        let e = err("foo $ bar");
        assert_eq!(e.position(), Some(Position { line: 1, column: 5 }), "{e}");
        let e = err("sum(foo))");
        assert_eq!(e.position(), Some(Position { line: 1, column: 9 }), "{e}");
        let e = err("foo{a=\"b}");
        assert!(e.position().is_some(), "{e}");
    }

    #[test]
    fn unknown_functions_are_unsupported_with_position() {
        let e = err("1 + holt_winters(foo[5m], 0.1, 0.1)");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert_eq!(e.position(), Some(Position { line: 1, column: 5 }));
        assert!(e.to_string().contains("unsupported function 'holt_winters'"), "{e}");
    }

    #[test]
    fn grammar_errors_have_positions_where_the_tokens_show_them() {
        let e = err("foo +");
        assert_eq!(e.kind(), ErrorKind::Parse);
        assert_eq!(e.position(), Some(Position { line: 1, column: 6 }), "{e}");
        assert_eq!(e.message(), "unexpected end of input after \"+\"");
        // The parser's message about the end of the input, placed there.
        let e = err("foo @");
        assert_eq!(e.position(), Some(Position { line: 1, column: 6 }), "{e}");
        assert!(e.message().starts_with("unexpected end of input in @"), "{e}");
        let e = err("foo offset");
        assert_eq!(e.position(), Some(Position { line: 1, column: 11 }), "{e}");
        let e = err("a\n  + * 2");
        assert_eq!(e.position(), Some(Position { line: 2, column: 5 }), "{e}");
        assert_eq!(e.message(), "unexpected \"*\" after \"+\"");
        let e = err("* foo");
        assert_eq!(e.position(), Some(Position { line: 1, column: 1 }), "{e}");
        assert!(e.message().contains("start of the query"), "{e}");
        let e = err("rate(foo[5m], )");
        assert_eq!(e.position(), None, "trailing comma is valid here, the error is elsewhere: {e}");
        let e = err("clamp_min(foo, * 2)");
        assert_eq!(e.position(), Some(Position { line: 1, column: 16 }), "{e}");
        let e = err("max(foo > )");
        assert_eq!(e.position(), Some(Position { line: 1, column: 11 }), "{e}");
        // Inside braces `!=` is a matcher, not an operator.
        let e = err("foo{a!=\"b\",} bar");
        assert_eq!(e.position(), None, "{e}");
    }

    #[test]
    fn other_grammar_errors_say_what_to_check() {
        for q in ["sum(rate(foo[5m])) by", "rate(foo[5m]) 3", "foo{a=\"b\"} bar", "sum(foo) bar"] {
            let e = err(q);
            assert_eq!(e.kind(), ErrorKind::Parse, "{q}");
            assert_eq!(e.position(), None, "{q}: {e}");
            assert_eq!(e.message(), INVALID_SYNTAX, "{q}");
        }
        for q in ["", "  # only a comment"] {
            let e = err(q);
            assert_eq!(e.message(), "no expression found in input", "{q:?}");
        }
        // The parser's own messages are kept.
        assert!(err("rate(foo)").message().contains("expected type matrix"));
    }

    #[test]
    fn limits_hold_before_the_parser_runs() {
        assert_eq!(err(&"(".repeat(5000)).kind(), ErrorKind::Parse);
        let long = vec!["a"; 2000].join(" + ");
        assert_eq!(err(&long).kind(), ErrorKind::Limit);
        let calls = format!("{}a{}", "abs(".repeat(1001), ")".repeat(1001));
        assert_eq!(err(&calls).kind(), ErrorKind::Limit);
        // Matchers in braces are not operators: 600 `!=` and `or` pass.
        let matchers = (0..300).map(|i| format!("l{i}!=\"x\" or m{i}=\"y\"")).collect::<Vec<_>>().join(",");
        assert!(parse_expr(&format!("foo{{{matchers}}}")).is_ok());
        assert_eq!(err(&"a".repeat(MAX_QUERY_BYTES + 1)).kind(), ErrorKind::Limit);
        for (q, column) in [("foo[1e300]", 5), ("foo offset inf", 12), ("foo offset -nan", 13), ("foo[99999999999999999999]", 5), ("foo[5m:1e13]", 8)] {
            let e = err(q);
            assert!(e.to_string().contains("out of range"), "{q}: {e}");
            assert_eq!(e.position(), Some(Position { line: 1, column }), "{q}: {e}");
        }
        assert!(parse_expr("foo[300] offset -60").is_ok());
        assert!(parse_expr("foo offset 1e300 * 0").is_err(), "an offset number is checked");
        assert!(parse_expr("foo * 1e300").is_ok(), "a number that is not a duration is not checked");
    }

    /// The token checks never fire on a query the parser accepts: checked on
    /// valid queries and on every query made by deleting, doubling or
    /// swapping their tokens (and they do fire on many of the others).
    #[test]
    fn token_checks_agree_with_the_parser() {
        let seeds = [
            "sum by (job) (rate(http_requests_total{code=~\"5..\", x!=\"y\"}[5m] offset 1m))",
            "avg without (instance) (a) > bool 0.5",
            "topk(2, a) or bottomk(1, b) unless c and d",
            "-a % on(x) b ^ ignoring(y) c",
            "clamp_min(round(a, 0.5), 0) + scalar(vector(time()))",
            "a * on(x) group_left(y) b",
            "a + ignoring(x) group_right c fill(0) d",
            "max_over_time(rate(a[5m])[1h:1m] @ 100 offset -5m)",
            "count(sum(a) by (b,)) - 1 atan2 2",
            "{__name__=~\"a.*\", b=\"c\" or d=\"e\"} != 3",
            "(a + (b)) / 2 == bool -1",
            "foo @ start() + bar @ end()",
            "sum(a) without () >= 1e3 <= 0x10",
            "f(a, -b,) < +c",
        ];
        let (mut checked, mut positioned) = (0, 0);
        for seed in seeds {
            let toks = lex(seed).unwrap();
            let texts: Vec<&str> = toks.iter().map(|t| &seed[t.start..t.end]).collect();
            let mut variants = vec![texts.join(" ")];
            for i in 0..texts.len() {
                let mut v = texts.clone();
                v.remove(i);
                variants.push(v.join(" "));
                let mut v = texts.clone();
                v.insert(i, texts[i]);
                variants.push(v.join(" "));
                if i + 1 < texts.len() {
                    let mut v = texts.clone();
                    v.swap(i, i + 1);
                    variants.push(v.join(" "));
                }
            }
            for q in variants {
                let Ok(toks) = lex(&q) else { continue };
                let Ok(parsed) = catch_unwind(AssertUnwindSafe(|| parser::parse(&q))) else { continue };
                let ours = grammar_error_at(&q, &toks);
                match parsed {
                    Ok(_) => assert_eq!(ours, None, "parser accepts, token checks refuse: {q}"),
                    Err(m) => positioned += usize::from(ours.is_some() && m == INVALID_QUERY),
                }
                checked += 1;
            }
        }
        assert!(checked > 300, "{checked}");
        assert!(positioned > 50, "{positioned}");
    }

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(position_of("ab\ncé d", 7), Position { line: 2, column: 4 });
        assert_eq!(position_of("", 5), Position { line: 1, column: 1 });
    }
}
