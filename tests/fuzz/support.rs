//! What every fuzz harness shares: the bounded case count, the corpus reader, and input
//! mutators (bytes, and the values of `key = value` / `"key": value` pairs).
//!
//! Included by path (`#[path = ".../tests/fuzz/support.rs"] mod support;`) from each harness,
//! so the crates need no shared test crate. See `tests/fuzz/README.md`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::sample::Index;

/// Environment variable that sets the number of cases of every fuzz property (the defaults
/// keep all harnesses together under a minute in the debug profile on two cores).
pub const CASES_VAR: &str = "FEDCARE_FUZZ_CASES";

/// Cases to run: `FEDCARE_FUZZ_CASES` if set, else `default`.
pub fn cases(default: u32) -> u32 {
    match std::env::var(CASES_VAR) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{CASES_VAR}={v:?} is not a number of cases")),
        Err(_) => default,
    }
}

/// A proptest configuration with `cases(default)` cases and shrinking bounded in time, so a
/// failure in CI reports within a minute. Failing cases are saved beside the harness
/// (`<harness>.proptest-regressions`) and replayed first on the next run.
pub fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        max_shrink_time: 30_000,
        failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    }
}

/// `tests/fuzz/corpus/<target>` from a crate's manifest directory (`root` is the path from
/// there to the repository's `tests/fuzz`).
pub fn corpus_dir(fuzz_root: &Path, target: &str) -> PathBuf {
    fuzz_root.join("corpus").join(target)
}

/// Every file of a corpus directory, sorted by name, as (name, bytes). Files whose name starts
/// with `.` or ends in `.md` are skipped. An absent or empty corpus is an error: a harness that
/// silently ran no corpus would prove nothing.
pub fn corpus(fuzz_root: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    files(&corpus_dir(fuzz_root, target))
}

/// The minimal inputs of known, unfixed bugs (`tests/fuzz/known-bugs/<target>`): run only by
/// each harness's ignored `known_bugs` test. Once a bug is fixed, move its file to the corpus.
pub fn known_bugs(fuzz_root: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_root.join("known-bugs").join(target);
    // No directory, or an empty one: no known bug left for this target.
    let any = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
    if any { files(&dir) } else { Vec::new() }
}

/// Every file of a directory (see [`corpus`]).
pub fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display())).path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{} has no files", dir.display());
    out
}

/// Values that have broken parsers before: limits of the integer types, non-finite and
/// extreme floats, empty, blank, huge and control-character strings, empty and nested
/// containers, wrong types. Most are valid in both TOML and JSON; the rest are meant to fail.
pub fn interesting_values() -> &'static [String] {
    static VALUES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    VALUES.get_or_init(|| {
    let mut v: Vec<String> = [
        "0", "-0", "1", "-1", "2", "3", "7", "64", "65", "255", "256", "1000", "65535", "65536", "100000", "1000000",
        "2147483647", "2147483648", "4294967295", "4294967296", "9223372036854775807", "-9223372036854775808",
        "18446744073709551615", "18446744073709551616", "99999999999999999999999", "0.0", "-0.0", "0.5", "1.0", "1e-5",
        "1e-320", "5e-324", "1e308", "-1e308", "1.7976931348623157e308", "1e309", "1e400", "nan", "+nan", "-nan",
        "inf", "+inf", "-inf", "NaN", "Infinity", "0x10", "0o7", "0b1", "1_000", "true", "false", "null", "\"\"",
        "\" \"", "\"x\"", "\"\\u0000\"", "\"\\n\"", "\"\\t\"", "\"é\"", "\"../../etc/passwd\"", "\"http://\"",
        "\"https://x\"", "\"none\"", "\"record\"", "\"site\"", "\"central\"", "\"distributed\"", "\"mlp\"",
        "\"logistic_regression\"", "\"manual\"", "\"automatic\"", "\"drop_row\"", "\"fail\"", "\"numeric\"",
        "\"categorical\"", "[]", "[[]]", "[0]", "[1, 2]", "[2, 1]", "[0, 0]", "[-1e308, 1e308]", "[\"\"]",
        "[\"a\", \"a\"]", "{}", "{ a = 1 }", "{\"a\": 1}", "[{}]",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("\"{}\"", "a".repeat(5000)));
    v.push(format!("[{}]", vec!["1"; 2000].join(", ")));
    v
    })
}

/// One edit of an input.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit of the byte at a position.
    FlipBit(Index, u8),
    /// Overwrite the byte at a position.
    SetByte(Index, u8),
    /// Insert bytes at a position.
    Insert(Index, Vec<u8>),
    /// Insert an interesting token at a position.
    InsertToken(Index, Index),
    /// Delete up to `n` bytes from a position.
    Delete(Index, usize),
    /// Cut the input at a position.
    Truncate(Index),
    /// Copy a range of the input to another position.
    Duplicate(Index, usize, Index),
    /// Replace the value of one `key = value` or `"key": value` pair with an interesting value.
    ReplaceValue(Index, Index),
    /// Delete one whole line.
    DeleteLine(Index),
    /// Repeat one whole line.
    DuplicateLine(Index),
    /// Swap two lines.
    SwapLines(Index, Index),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = prop::collection::vec(
        prop_oneof![any::<u8>(), prop::sample::select(b"\n\r\t \"'\\,;:=[]{}#.-+0123456789eE\x00\xff".to_vec())],
        1..8,
    );
    prop_oneof![
        2 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => (any::<Index>(), bytes).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        2 => (any::<Index>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..200, any::<Index>()).prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        6 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// One to `max` mutations.
pub fn mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=max)
}

/// A mutation that mostly keeps a TOML or JSON document parseable: a value replaced, a line
/// deleted, repeated or swapped, a token inserted.
pub fn structured_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        8 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        1 => any::<Index>().prop_map(Mutation::DeleteLine),
        1 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
    ]
}

/// Mutations for text formats: three in four cases only structured ones (so most inputs get
/// past the syntax to the validation), otherwise any.
pub fn text_mutations(max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    prop_oneof![
        3 => prop::collection::vec(structured_mutation(), 1..=max),
        1 => prop::collection::vec(mutation(), 1..=max),
    ]
}

/// Byte ranges of lines, each without its `\n`.
fn lines(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in input.iter().enumerate() {
        if *b == b'\n' {
            out.push((start, i));
            start = i + 1;
        }
    }
    if start < input.len() {
        out.push((start, input.len()));
    }
    out
}

/// Where the value of each `key = value` (TOML) or `"key": value` (JSON) pair starts and ends:
/// from after the `=` or `:` to the first `,`, `}`, `]`, `#` or line end outside strings and
/// brackets (so a whole multi-line array is one value). `=` on comment lines is skipped.
fn value_spans(input: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut line_start = 0;
    for (i, b) in input.iter().enumerate() {
        if *b == b'\n' {
            line_start = i + 1;
            continue;
        }
        let is_pair = match b {
            b'=' => input[line_start..i].iter().find(|c| !c.is_ascii_whitespace()) != Some(&b'#'),
            b':' => i > 0 && input[i - 1] == b'"',
            _ => false,
        };
        if !is_pair {
            continue;
        }
        let mut depth = 0i32;
        let mut quote: Option<u8> = None;
        let mut end = input.len();
        let mut j = i + 1;
        while j < input.len() {
            let c = input[j];
            if let Some(q) = quote {
                if c == b'\\' && q == b'"' {
                    j += 1;
                } else if c == q || c == b'\n' {
                    quote = None;
                }
            } else {
                match c {
                    b'"' | b'\'' => quote = Some(c),
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' if depth > 0 => depth -= 1,
                    b',' | b'}' | b']' | b'\n' | b'#' if depth == 0 => {
                        end = j;
                        break;
                    }
                    _ => {}
                }
            }
            j += 1;
        }
        out.push((i + 1, end));
    }
    out
}

/// Values of the same kind as `old` (a number, a string, a boolean, an array, a table).
fn same_kind(old: &[u8]) -> &'static [&'static str] {
    let first = old.iter().find(|c| !c.is_ascii_whitespace()).copied().unwrap_or(b' ');
    match first {
        b'0'..=b'9' | b'-' | b'+' | b'.' | b'n' | b'i' => &[
            "0", "-0", "1", "-1", "2", "3", "64", "65", "1000", "65535", "100000", "2147483648", "4294967295",
            "4294967296", "9223372036854775807", "18446744073709551615", "1e19", "0.0", "-0.0", "0.5", "1.0",
            "0.999999", "1e-5", "1e-320", "5e-324", "1e308", "-1e308", "1e309", "nan", "inf", "-inf", "1.5",
        ],
        b'"' | b'\'' => &[
            "\"\"", "\" \"", "\"x\"", "\"\\u0000\"", "\"\\n\"", "\"x\\nPolicy: passes\"", "\"\u{e9}\"", "\"\u{202e}x\"",
            "\"../../etc/passwd\"", "\"http://\"", "\"https://x\"", "\"none\"", "\"record\"", "\"site\"", "\"central\"",
            "\"mlp\"", "\"manual\"", "\"fail\"", "\"numeric\"", "\"categorical\"", "\"age\"", "\"disease\"", "\"?\"",
            "\",\"", "\";\"", "\"\\t\"", "\"\"\"\"\"\"",
        ],
        b't' | b'f' => &["true", "false", "0", "\"true\""],
        b'[' => &["[]", "[[]]", "[0]", "[1, 2]", "[2, 1]", "[0, 0]", "[-1e308, 1e308]", "[nan, 1]", "[\"\"]", "[\"a\", \"a\"]", "[{}]", "[1, \"a\"]"],
        b'{' => &["{}", "{ a = 1 }", "{\"a\": 1}", "{ greater_than = nan }", "{ equals = 1 }"],
        _ => &["0"],
    }
}

/// Applies one mutation (positions are taken modulo the current length, so every mutation
/// applies to every input).
pub fn apply(input: &mut Vec<u8>, m: &Mutation) {
    let values = interesting_values();
    let pos = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
    match m {
        Mutation::FlipBit(i, b) => {
            if !input.is_empty() {
                let p = i.index(input.len());
                input[p] ^= 1 << b;
            }
        }
        Mutation::SetByte(i, b) => {
            if !input.is_empty() {
                let p = i.index(input.len());
                input[p] = *b;
            }
        }
        Mutation::Insert(i, bytes) => {
            let p = pos(i, input.len());
            input.splice(p..p, bytes.iter().copied());
        }
        Mutation::InsertToken(i, t) => {
            let p = pos(i, input.len());
            let token = t.get(values).as_bytes().to_vec();
            input.splice(p..p, token);
        }
        Mutation::Delete(i, n) => {
            if !input.is_empty() {
                let p = i.index(input.len());
                let end = (p + n).min(input.len());
                input.drain(p..end);
            }
        }
        Mutation::Truncate(i) => {
            let p = pos(i, input.len());
            input.truncate(p);
        }
        Mutation::Duplicate(a, n, b) => {
            if !input.is_empty() {
                let p = a.index(input.len());
                let end = (p + n).min(input.len());
                let copy = input[p..end].to_vec();
                let q = pos(b, input.len());
                input.splice(q..q, copy);
            }
        }
        Mutation::ReplaceValue(i, v) => {
            let spans = value_spans(input);
            if !spans.is_empty() {
                let (s, e) = *i.get(&spans);
                // Four times in five a value of the same kind, so the document still parses
                // and the value reaches validation; otherwise anything.
                let kind = same_kind(&input[s..e]);
                let token: &str = if v.index(5) < 4 { v.get::<&str>(kind) } else { v.get::<String>(values).as_str() };
                let mut bytes = b" ".to_vec();
                bytes.extend_from_slice(token.as_bytes());
                input.splice(s..e, bytes);
            }
        }
        Mutation::DeleteLine(i) => {
            let l = lines(input);
            if !l.is_empty() {
                let (s, e) = *i.get(&l);
                let e = (e + 1).min(input.len());
                input.drain(s..e);
            }
        }
        Mutation::DuplicateLine(i) => {
            let l = lines(input);
            if !l.is_empty() {
                let (s, e) = *i.get(&l);
                let mut copy = input[s..e].to_vec();
                copy.push(b'\n');
                input.splice(s..s, copy);
            }
        }
        Mutation::SwapLines(a, b) => {
            let l = lines(input);
            if l.len() >= 2 {
                let (x, y) = (*a.get(&l), *b.get(&l));
                let (first, second) = if x.0 <= y.0 { (x, y) } else { (y, x) };
                if first != second {
                    let one = input[first.0..first.1].to_vec();
                    let two = input[second.0..second.1].to_vec();
                    // Replace the later line first so the earlier range stays valid.
                    input.splice(second.0..second.1, one);
                    input.splice(first.0..first.1, two);
                }
            }
        }
    }
}

/// `input` with every mutation applied in order.
pub fn mutated(input: &[u8], ms: &[Mutation]) -> Vec<u8> {
    let mut out = input.to_vec();
    for m in ms {
        apply(&mut out, m);
    }
    out
}

/// Arbitrary text: mostly printable ASCII and TOML/JSON punctuation, some any-char.
pub fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[ -~\n\t]{0,300}",
        2 => prop::collection::vec(
            prop::sample::select(
                vec!["[", "]", "{", "}", "=", "\"", "'", ",", "\n", " ", "a", "x.y", "1", "-1", "1e400", "nan", "true",
                     "[schema]", "[policy]", "[site]", "[data]", "[privacy]", "[[x]]", "#", "\"\"\"", "'''", "\\u0000"]
            ),
            0..80
        ).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

/// The path of the repository's `tests/fuzz` from a crate two levels below the root.
pub fn fuzz_root_from_crate(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../../tests/fuzz")
}
