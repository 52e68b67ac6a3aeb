//! The vm.conf parser: the token stream (macros, includes) and the
//! top-level statements; blocks are in [`super::vm`] and [`super::blocks`].
//!
//! On an error the parser records it, skips to the end of the statement (or
//! of the block that statement opened) and goes on, so that one run reports
//! every error of a file.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use super::errors::{ConfigError, ConfigErrors, ErrorKind};
use super::lexer::{lex, Pos, Tok, Token};
use super::macros::Macros;
use super::model::{Config, DEFAULT_LOCAL_INET6_PREFIX};
use super::values;

/// Deepest macro expansion (a macro whose value uses macros, and so on).
const MAX_MACRO_DEPTH: u8 = 16;
/// Deepest include nesting, far past any sane use.
const MAX_INCLUDE_DEPTH: usize = 16;

/// A statement failed; the error is recorded and the caller recovers.
pub(super) struct Failed;

/// The result of parsing one piece of a statement.
pub(super) type Parsed<T> = Result<T, Failed>;

/// The parser's state.
pub(super) struct Parser {
    /// Every file read, indexed by [`Pos::file`].
    files: Vec<PathBuf>,
    /// Tokens not yet consumed.
    queue: VecDeque<Token>,
    /// Canonical paths of the files being read, outermost first.
    include_stack: Vec<PathBuf>,
    /// The macro table.
    macros: Macros,
    /// The position of the last token handed out (for end-of-file errors).
    last: Pos,
    /// A macro failed to expand in the current statement: the errors that
    /// follow from its missing tokens are not reported, until recovery.
    quiet: bool,
    /// Errors found so far.
    pub(super) errors: ConfigErrors,
    /// What was parsed so far.
    pub(super) config: Config,
}

impl Parser {
    /// A parser of `text`, read from `name`, with command-line `defines`.
    pub(super) fn new(name: &Path, text: &str, defines: &[(String, String)]) -> Self {
        let (macros, define_errors) = Macros::with_defines(defines);
        let mut parser = Parser {
            files: vec![name.to_path_buf()],
            queue: VecDeque::new(),
            include_stack: vec![name.canonicalize().unwrap_or_else(|_| name.to_path_buf())],
            macros,
            last: Pos { file: 0, line: 1 },
            quiet: false,
            errors: ConfigErrors::default(),
            config: Config::default(),
        };
        for kind in define_errors {
            parser.errors.push(ConfigError {
                file: "-D".into(),
                line: 0,
                kind,
            });
        }
        let tokens = parser.lex_file(text, 0);
        parser.queue.extend(tokens);
        parser
    }

    /// Lexes a whole file, recording its errors; ends with a newline.
    fn lex_file(&mut self, text: &str, file: usize) -> Vec<Token> {
        let (mut tokens, errors) = lex(text, file, 1);
        for (pos, kind) in errors {
            self.error(pos, kind);
        }
        let end = tokens.last().map_or(Pos { file, line: 1 }, |t| t.pos);
        if tokens.last().is_none_or(|t| t.tok != Tok::Newline) {
            tokens.push(Token {
                tok: Tok::Newline,
                pos: end,
                depth: 0,
            });
        }
        tokens
    }

    /// Records an error at `pos`.
    pub(super) fn error(&mut self, pos: Pos, kind: ErrorKind) {
        if self.quiet {
            return;
        }
        let file = self.file(pos).to_path_buf();
        self.errors.push(ConfigError {
            file,
            line: pos.line,
            kind,
        });
    }

    /// Records an error at `pos` and fails the statement.
    pub(super) fn fail<T>(&mut self, pos: Pos, kind: ErrorKind) -> Parsed<T> {
        self.error(pos, kind);
        Err(Failed)
    }

    /// The file a position is in.
    pub(super) fn file(&self, pos: Pos) -> &Path {
        self.files
            .get(pos.file)
            .map_or(Path::new("?"), PathBuf::as_path)
    }

    /// Resolves the front of the queue: expands macros, leaves includes.
    fn settle(&mut self) {
        while let Some(front) = self.queue.front() {
            match &front.tok {
                Tok::IncludeEnd => {
                    self.include_stack.pop();
                    self.queue.pop_front();
                }
                Tok::Macro(name) => {
                    let (name, pos, depth) = (name.clone(), front.pos, front.depth);
                    self.queue.pop_front();
                    self.expand(&name, pos, depth);
                }
                _ => return,
            }
        }
    }

    /// Replaces `$name` by its value's tokens.
    fn expand(&mut self, name: &str, pos: Pos, depth: u8) {
        let Some(value) = self.macros.get(name).map(str::to_owned) else {
            self.error(pos, ErrorKind::UndefinedMacro(name.into()));
            self.quiet = true;
            return;
        };
        if depth >= MAX_MACRO_DEPTH {
            self.error(pos, ErrorKind::MacroTooDeep(name.into()));
            self.quiet = true;
            return;
        }
        let (tokens, errors) = lex(&value, pos.file, pos.line);
        for (_, kind) in errors {
            self.error(pos, kind);
        }
        for mut token in tokens.into_iter().rev() {
            token.pos = pos;
            token.depth = depth + 1;
            self.queue.push_front(token);
        }
    }

    /// The next token, without consuming it.
    pub(super) fn peek(&mut self) -> Tok {
        self.settle();
        self.queue.front().map_or(Tok::Eof, |t| t.tok.clone())
    }

    /// Consumes the next token.
    pub(super) fn next(&mut self) -> Token {
        self.settle();
        match self.queue.pop_front() {
            Some(token) => {
                self.last = token.pos;
                token
            }
            None => Token {
                tok: Tok::Eof,
                pos: self.last,
                depth: 0,
            },
        }
    }

    /// Fails with "expected `what`" at the token `found`; a token ending
    /// the statement or opening or closing a block is put back, so that
    /// recovery stops at it or skips the whole block.
    pub(super) fn unexpected<T>(&mut self, found: &Token, expected: &'static str) -> Parsed<T> {
        if matches!(
            found.tok,
            Tok::Newline | Tok::Semi | Tok::LBrace | Tok::RBrace
        ) {
            self.queue.push_front(found.clone());
        }
        let found_text = found.tok.describe();
        self.fail(
            found.pos,
            ErrorKind::Unexpected {
                expected,
                found: found_text,
            },
        )
    }

    /// Consumes the keyword `kw` or fails.
    pub(super) fn keyword(&mut self, kw: &'static str) -> Parsed<Pos> {
        let token = self.next();
        match &token.tok {
            Tok::Word(w) if w == kw => Ok(token.pos),
            _ => self.unexpected(&token, kw),
        }
    }

    /// True (and consumed) when the next token is the keyword `kw`.
    pub(super) fn accept(&mut self, kw: &str) -> bool {
        if matches!(self.peek(), Tok::Word(w) if w == kw) {
            self.next();
            true
        } else {
            false
        }
    }

    /// Consumes a string: quoted, or a bare word.
    pub(super) fn string(&mut self, expected: &'static str) -> Parsed<(String, Pos)> {
        let token = self.next();
        match token.tok {
            Tok::Word(s) | Tok::Quoted(s) => Ok((s, token.pos)),
            _ => self.unexpected(&token, expected),
        }
    }

    /// Consumes a string and converts it with `f`, failing with its error.
    pub(super) fn value<T>(
        &mut self,
        expected: &'static str,
        f: impl FnOnce(&str) -> Result<T, ErrorKind>,
    ) -> Parsed<(T, Pos)> {
        let (text, pos) = self.string(expected)?;
        match f(&text) {
            Ok(v) => Ok((v, pos)),
            Err(kind) => self.fail(pos, kind),
        }
    }

    /// True when the next token ends an option or statement.
    pub(super) fn at_end(&mut self) -> bool {
        matches!(
            self.peek(),
            Tok::Newline | Tok::Semi | Tok::Comma | Tok::RBrace | Tok::Eof
        )
    }

    /// Skips the rest of a failed statement: up to a newline or `;` outside
    /// any block it opened, or up to (not past) the `}` closing the block
    /// the statement is in.
    pub(super) fn recover(&mut self) {
        self.quiet = false;
        let mut depth = 0usize;
        loop {
            match self.peek() {
                Tok::Eof => return,
                Tok::RBrace if depth == 0 => return,
                Tok::RBrace => depth -= 1,
                Tok::LBrace => depth += 1,
                Tok::Newline | Tok::Semi if depth == 0 => {
                    self.next();
                    return;
                }
                _ => {}
            }
            self.next();
        }
    }

    /// Parses `{ option... }`, calling `option` for each option's first
    /// token; an option must end at a newline, `;`, `,` or the `}`.
    pub(super) fn block(
        &mut self,
        mut option: impl FnMut(&mut Self, Token) -> Parsed<()>,
    ) -> Parsed<()> {
        let open = self.next();
        if open.tok != Tok::LBrace {
            return self.unexpected(&open, "'{'");
        }
        loop {
            let token = self.next();
            match token.tok {
                Tok::Newline | Tok::Semi | Tok::Comma => {}
                Tok::RBrace => return Ok(()),
                Tok::Eof => return self.fail(open.pos, ErrorKind::UnclosedBlock),
                _ => {
                    let ok = option(self, token).is_ok() && self.end_of_option().is_ok();
                    if !ok {
                        self.recover();
                    }
                }
            }
        }
    }

    /// Fails unless the next token ends an option.
    fn end_of_option(&mut self) -> Parsed<()> {
        if self.at_end() {
            self.quiet = false;
            return Ok(());
        }
        let token = self.next();
        self.unexpected(&token, "end of line")
    }

    /// Parses everything.
    pub(super) fn run(&mut self) {
        loop {
            let token = self.next();
            let result = match &token.tok {
                Tok::Eof => return,
                Tok::Newline | Tok::Semi => continue,
                Tok::Word(w) if w == "include" => {
                    // An include ends its own statement before its tokens are queued.
                    if self.include().is_err() {
                        self.recover();
                    }
                    continue;
                }
                Tok::Word(w) => match w.as_str() {
                    "local" => self.local(),
                    "socket" => self.socket(),
                    "staggered" => self.staggered(),
                    "vm" => self.vm(token.pos),
                    "switch" => self.switch(token.pos),
                    _ if self.peek() == Tok::Eq => self.define(w.clone(), token.pos),
                    _ => self.fail(token.pos, ErrorKind::UnknownKeyword(w.clone())),
                },
                Tok::RBrace => {
                    // Not put back (it closes nothing), so recovery moves on.
                    let found = token.tok.describe();
                    self.fail(
                        token.pos,
                        ErrorKind::Unexpected {
                            expected: "a statement",
                            found,
                        },
                    )
                }
                _ => self.unexpected(&token, "a statement"),
            };
            let ok = result.is_ok() && self.end_of_statement().is_ok();
            if !ok {
                self.recover();
            }
        }
    }

    /// Consumes the end of a top-level statement.
    fn end_of_statement(&mut self) -> Parsed<()> {
        let token = self.next();
        match token.tok {
            Tok::Newline | Tok::Semi | Tok::Eof => {
                self.quiet = false;
                Ok(())
            }
            _ => self.unexpected(&token, "end of line"),
        }
    }

    /// `name = value`.
    fn define(&mut self, name: String, pos: Pos) -> Parsed<()> {
        self.next(); // the '='
        let (value, _) = self.string("a macro value")?;
        match self.macros.define(&name, value) {
            Ok(()) => Ok(()),
            Err(kind) => self.fail(pos, kind),
        }
    }

    /// `include "file"`, relative to the including file's directory.
    fn include(&mut self) -> Parsed<()> {
        let (name, pos) = self.string("a file name")?;
        self.end_of_statement()?;
        let base = self
            .file(pos)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = base.join(&name);
        let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
        if self.include_stack.contains(&canonical) {
            self.error(pos, ErrorKind::IncludeLoop(path));
            return Ok(());
        }
        if self.include_stack.len() > MAX_INCLUDE_DEPTH {
            self.error(pos, ErrorKind::IncludeLoop(path));
            return Ok(());
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                self.error(
                    pos,
                    ErrorKind::Read {
                        path,
                        reason: e.to_string(),
                    },
                );
                return Ok(());
            }
        };
        self.files.push(path);
        let tokens = self.lex_file(&text, self.files.len() - 1);
        let end = Token {
            tok: Tok::IncludeEnd,
            pos,
            depth: 0,
        };
        self.queue.push_front(end);
        for token in tokens.into_iter().rev() {
            self.queue.push_front(token);
        }
        self.include_stack.push(canonical);
        Ok(())
    }

    /// `local prefix P`, `local inet6 [[prefix] P]`.
    fn local(&mut self) -> Parsed<()> {
        let token = self.next();
        match &token.tok {
            Tok::Word(w) if w == "prefix" => {
                let (prefix, _) = self.value("an IPv4 prefix", values::prefix4)?;
                self.config.globals.local_prefix = prefix;
            }
            Tok::Word(w) if w == "inet6" => {
                let mut prefix = DEFAULT_LOCAL_INET6_PREFIX;
                if !self.at_end() {
                    self.accept("prefix");
                    prefix = self.value("an IPv6 prefix", values::prefix6)?.0;
                }
                self.config.globals.local_inet6 = Some(prefix);
            }
            _ => return self.unexpected(&token, "'prefix' or 'inet6'"),
        }
        Ok(())
    }

    /// `socket owner user[:group]`.
    fn socket(&mut self) -> Parsed<()> {
        self.keyword("owner")?;
        let (owner, _) = self.value("an owner", values::owner)?;
        self.config.globals.socket_owner = Some(owner);
        Ok(())
    }

    /// `staggered start parallel N delay S`.
    fn staggered(&mut self) -> Parsed<()> {
        self.keyword("start")?;
        self.keyword("parallel")?;
        let parallel = self
            .value("a number", |t| values::number(t, "parallel", 1, 1024))?
            .0;
        self.keyword("delay")?;
        let delay = self
            .value("a number", |t| values::number(t, "delay", 0, 3600))?
            .0;
        self.config.globals.staggered = Some(super::model::Staggered {
            parallel: parallel as u32,
            delay_secs: delay as u32,
        });
        Ok(())
    }
}
