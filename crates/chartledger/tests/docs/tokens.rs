//! Just enough of a Rust lexer to find string literals in their context: comments are
//! dropped, strings (normal, byte, raw) and char literals are read whole so that their
//! contents never count as code, and `#[cfg(test)]` items are removed.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A string literal's text between its quotes (escapes left as written).
    Str(String),
    /// An identifier, keyword or number.
    Word(String),
    Punct(char),
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of `src`.
pub fn lex(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            ch if ch.is_whitespace() => i += 1,
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => i = block_comment_end(&c, i),
            '"' => {
                let (text, end) = quoted(&c, i + 1);
                out.push(Tok::Str(text));
                i = end;
            }
            '\'' => i = char_or_lifetime_end(&c, i),
            ch if is_word(ch) => {
                let start = i;
                while i < c.len() && is_word(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let prefix = matches!(word.as_str(), "r" | "b" | "br" | "c" | "cr");
                if prefix && c.get(i) == Some(&'"') && !word.ends_with('r') {
                    let (text, end) = quoted(&c, i + 1);
                    out.push(Tok::Str(text));
                    i = end;
                } else if prefix && word.ends_with('r') && matches!(c.get(i), Some('"' | '#')) {
                    match raw(&c, i) {
                        Some((text, end)) => {
                            out.push(Tok::Str(text));
                            i = end;
                        }
                        // `r#ident`: a raw identifier.
                        None => out.push(Tok::Word(word)),
                    }
                } else {
                    out.push(Tok::Word(word));
                }
            }
            ch => {
                out.push(Tok::Punct(ch));
                i += 1;
            }
        }
    }
    out
}

fn block_comment_end(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// The text of a `"…"` literal whose contents start at `i`, and the index after it.
fn quoted(c: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < c.len() && c[i] != '"' {
        i += if c[i] == '\\' { 2 } else { 1 };
    }
    let end = i.min(c.len());
    (c[start..end].iter().collect(), end + 1)
}

/// A raw string starting at `i` (at its `#`s or quote), if it is one.
fn raw(c: &[char], mut i: usize) -> Option<(String, usize)> {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if c.get(i) != Some(&'"') {
        return None;
    }
    let start = i + 1;
    let mut j = start;
    while j < c.len() {
        if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
            return Some((c[start..j].iter().collect(), j + 1 + hashes));
        }
        j += 1;
    }
    Some((c[start..].iter().collect(), c.len()))
}

/// Past a char literal (`'x'`, `'\n'`, `'\u{1F600}'`) or a lifetime (`'a`).
fn char_or_lifetime_end(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if c.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    let mut j = i + 1;
    while j < c.len() && is_word(c[j]) {
        j += 1;
    }
    j
}

/// The index after the group that opens at `open` (a `(`, `[` or `{`).
pub fn group_end(t: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, tok) in t.iter().enumerate().skip(open) {
        match tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return k + 1;
                }
            }
            _ => {}
        }
    }
    t.len()
}

/// `t` without the items marked `#[cfg(test)]`.
pub fn without_tests(t: &[Tok]) -> Vec<Tok> {
    let attr: Vec<Tok> = lex("#[cfg(test)]");
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if t[i..].starts_with(&attr) {
            i = item_end(t, i + attr.len());
        } else {
            out.push(t[i].clone());
            i += 1;
        }
    }
    out
}

/// The index after the item starting at `i` (after its outer attributes, if any): at
/// its first `;` outside brackets, or after its first braced block.
fn item_end(t: &[Tok], mut i: usize) -> usize {
    while i < t.len() {
        match t[i] {
            Tok::Punct(';') => return i + 1,
            Tok::Punct('{') => return group_end(t, i),
            Tok::Punct('(' | '[') => i = group_end(t, i),
            _ => i += 1,
        }
    }
    i
}

#[test]
fn the_lexer_keeps_literals_whole_and_drops_tests() {
    let src = r##"
        // "line.comment"
        /* "block.comment" /* nested */ */
        fn code(&self) -> &'static str { 'x'; '\''; "a.b" }
        const R: &str = r#"raw "quoted".x"#;
        #[cfg(test)]
        mod tests { fn f() { "test.only"; } }
        #[cfg(test)]
        #[allow(dead_code)]
        const T: [&str; 1] = ["test.const"];
        const B: &[u8] = b"bytes.x";
    "##;
    let strs: Vec<String> = without_tests(&lex(src))
        .into_iter()
        .filter_map(|t| match t {
            Tok::Str(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(strs, ["a.b", "raw \"quoted\".x", "bytes.x"]);
}
