//! The vm.conf lexer: text into tokens with their line.
//!
//! `#` starts a comment outside quotes; `\` at the end of a line continues
//! it (the next line's number is still counted); `"..."` is a string in which
//! `\"` and `\\` are escapes and `$` is not special; `$name` is a macro use,
//! expanded by the parser; `{ } = , ;` and newlines are tokens; anything else
//! is a bare word (numbers, sizes such as `1G`, MAC addresses, `user:group`).

use super::errors::ErrorKind;

/// Where a token is: an index into the parser's file list and a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Index of the file in the parser's list.
    pub file: usize,
    /// 1-based line.
    pub line: u32,
}

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A bare word: keyword, number, size, address, name.
    Word(String),
    /// A quoted string, without its quotes and escapes.
    Quoted(String),
    /// `$name`, to be replaced by the macro's value.
    Macro(String),
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `=`
    Eq,
    /// `,`
    Comma,
    /// `;`
    Semi,
    /// The end of a (possibly continued) line.
    Newline,
    /// The end of an included file (the parser pops its include stack).
    IncludeEnd,
    /// The end of the input.
    Eof,
}

impl Tok {
    /// The token as an error message names it.
    pub fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Quoted(s) => format!("\"{s}\""),
            Tok::Macro(m) => format!("${m}"),
            Tok::LBrace => "'{'".into(),
            Tok::RBrace => "'}'".into(),
            Tok::Eq => "'='".into(),
            Tok::Comma => "','".into(),
            Tok::Semi => "';'".into(),
            Tok::Newline => "end of line".into(),
            Tok::IncludeEnd | Tok::Eof => "end of file".into(),
        }
    }
}

/// A token and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub tok: Tok,
    /// Its place.
    pub pos: Pos,
    /// How many macro expansions produced it (0: written in the file).
    pub depth: u8,
}

/// Characters that end a bare word.
fn ends_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, '{' | '}' | '=' | ',' | ';' | '#' | '"' | '$')
}

/// Characters of a macro name.
pub fn is_macro_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Splits `text` into tokens, the first line numbered `first_line`.
///
/// Returns the tokens and the errors met (an unterminated string ends at
/// its line; lexing goes on so that later errors are reported too).
pub fn lex(text: &str, file: usize, first_line: u32) -> (Vec<Token>, Vec<(Pos, ErrorKind)>) {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut errors = Vec::new();
    let mut line = first_line;
    let mut i = 0;
    while i < chars.len() {
        let pos = Pos { file, line };
        let push = |tokens: &mut Vec<Token>, tok| tokens.push(Token { tok, pos, depth: 0 });
        let c = chars[i];
        match c {
            '\n' => {
                push(&mut tokens, Tok::Newline);
                line += 1;
                i += 1;
            }
            '\\' if continues(&chars, i) => {
                line += 1;
                i = skip_continuation(&chars, i);
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '{' | '}' | '=' | ',' | ';' => {
                let tok = match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    '=' => Tok::Eq,
                    ',' => Tok::Comma,
                    _ => Tok::Semi,
                };
                push(&mut tokens, tok);
                i += 1;
            }
            '"' => {
                let (text, next, lines, closed) = quoted(&chars, i + 1);
                if closed {
                    push(&mut tokens, Tok::Quoted(text));
                } else {
                    errors.push((pos, ErrorKind::UnterminatedString));
                }
                line += lines;
                i = next;
            }
            '$' => {
                let start = i + 1;
                i = start;
                while i < chars.len() && is_macro_char(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if name.is_empty() {
                    errors.push((pos, ErrorKind::BadMacroName("$".into())));
                } else {
                    push(&mut tokens, Tok::Macro(name));
                }
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !ends_word(chars[i])
                    && !(chars[i] == '\\' && continues(&chars, i))
                {
                    i += 1;
                }
                push(&mut tokens, Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    (tokens, errors)
}

/// True when the backslash at `i` ends its line (`\` then `\n` or `\r\n`).
fn continues(chars: &[char], i: usize) -> bool {
    match chars.get(i + 1) {
        Some('\n') => true,
        Some('\r') => chars.get(i + 2) == Some(&'\n'),
        _ => false,
    }
}

/// The index after the line continuation starting at `i`.
fn skip_continuation(chars: &[char], i: usize) -> usize {
    if chars.get(i + 1) == Some(&'\r') {
        i + 3
    } else {
        i + 2
    }
}

/// Reads a quoted string whose text starts at `i`: returns the text, the
/// index after it, the continued lines inside it, and whether it was closed.
fn quoted(chars: &[char], mut i: usize) -> (String, usize, u32, bool) {
    let mut text = String::new();
    let mut lines = 0;
    while i < chars.len() {
        match chars[i] {
            '"' => return (text, i + 1, lines, true),
            '\n' => return (text, i, lines, false),
            '\\' if continues(chars, i) => {
                lines += 1;
                i = skip_continuation(chars, i);
            }
            '\\' if matches!(chars.get(i + 1), Some('"') | Some('\\')) => {
                text.push(chars[i + 1]);
                i += 2;
            }
            c => {
                text.push(c);
                i += 1;
            }
        }
    }
    (text, i, lines, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<(Tok, u32)> {
        let (tokens, errors) = lex(text, 0, 1);
        assert!(errors.is_empty(), "{errors:?}");
        tokens.into_iter().map(|t| (t.tok, t.pos.line)).collect()
    }

    fn word(w: &str) -> Tok {
        Tok::Word(w.into())
    }

    #[test]
    fn lex_words_and_punctuation_split() {
        assert_eq!(
            toks("vm \"a b\" { memory 1G; x=y, $m }\n"),
            vec![
                (word("vm"), 1),
                (Tok::Quoted("a b".into()), 1),
                (Tok::LBrace, 1),
                (word("memory"), 1),
                (word("1G"), 1),
                (Tok::Semi, 1),
                (word("x"), 1),
                (Tok::Eq, 1),
                (word("y"), 1),
                (Tok::Comma, 1),
                (Tok::Macro("m".into()), 1),
                (Tok::RBrace, 1),
                (Tok::Newline, 1),
            ]
        );
    }

    #[test]
    fn lex_comment_outside_quotes_dropped() {
        assert_eq!(
            toks("a # b \"c\"\n\"d # e\"#f"),
            vec![
                (word("a"), 1),
                (Tok::Newline, 1),
                (Tok::Quoted("d # e".into()), 2)
            ]
        );
    }

    #[test]
    fn lex_continuation_joins_lines_and_counts_them() {
        assert_eq!(
            toks("a \\\n b\\\r\nc\nd"),
            vec![
                (word("a"), 1),
                (word("b"), 2),
                (word("c"), 3),
                (Tok::Newline, 3),
                (word("d"), 4)
            ]
        );
    }

    #[test]
    fn lex_quoted_escapes_and_dollar_kept() {
        assert_eq!(
            toks(r#""a\"b\\c $x""#),
            vec![(Tok::Quoted(r#"a"b\c $x"#.into()), 1)]
        );
    }

    #[test]
    fn lex_mac_and_owner_single_words() {
        assert_eq!(
            toks("fe:e1:bb:d1:2d:3e root:wheel"),
            vec![(word("fe:e1:bb:d1:2d:3e"), 1), (word("root:wheel"), 1)]
        );
    }

    #[test]
    fn lex_unterminated_string_error_on_its_line() {
        let (tokens, errors) = lex("a\n\"open\nb", 0, 1);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0.line, 2);
        assert!(matches!(errors[0].1, ErrorKind::UnterminatedString));
        assert_eq!(
            tokens.last().map(|t| (&t.tok, t.pos.line)),
            Some((&word("b"), 3))
        );
    }

    #[test]
    fn lex_lone_dollar_error() {
        let (_, errors) = lex("$ x", 0, 1);
        assert!(matches!(errors[0].1, ErrorKind::BadMacroName(_)));
    }
}
