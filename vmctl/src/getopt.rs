//! POSIX-style option parsing, as vmctl's commands use it: single-letter
//! flags that may be combined (`-fw`), options whose value is attached
//! (`-m1G`) or the next argument (`-m 1G`), `--` ending the options, and
//! options only before the operands (as OpenBSD's getopt).

/// One option found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opt {
    /// Its letter.
    pub letter: char,
    /// Its value, for an option that takes one.
    pub value: Option<String>,
}

/// Options and operands of one command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Options in order.
    pub opts: Vec<Opt>,
    /// The rest.
    pub operands: Vec<String>,
}

impl Parsed {
    /// Whether flag `letter` was given.
    pub fn flag(&self, letter: char) -> bool {
        self.opts.iter().any(|o| o.letter == letter)
    }

    /// Every value of option `letter`, in order.
    pub fn values(&self, letter: char) -> Vec<String> {
        self.opts
            .iter()
            .filter(|o| o.letter == letter)
            .filter_map(|o| o.value.clone())
            .collect()
    }

    /// The last value of option `letter`.
    pub fn value(&self, letter: char) -> Option<String> {
        self.values(letter).pop()
    }
}

/// Parses `args` against `spec`, getopt's string (a letter followed by `:`
/// takes a value). Errors read like getopt's.
pub fn getopt(args: &[String], spec: &str) -> Result<Parsed, String> {
    let takes_value = |c: char| -> Option<bool> {
        let i = spec.find(c)?;
        Some(spec[i + c.len_utf8()..].starts_with(':'))
    };
    let mut parsed = Parsed::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            i += 1;
            break;
        }
        if !arg.starts_with('-') || arg == "-" {
            break;
        }
        let letters: Vec<char> = arg[1..].chars().collect();
        let mut j = 0;
        while j < letters.len() {
            let c = letters[j];
            match takes_value(c).filter(|_| c != ':') {
                None => return Err(format!("unknown option -- {c}")),
                Some(false) => parsed.opts.push(Opt {
                    letter: c,
                    value: None,
                }),
                Some(true) => {
                    let rest: String = letters[j + 1..].iter().collect();
                    let value = if !rest.is_empty() {
                        rest
                    } else {
                        i += 1;
                        args.get(i)
                            .cloned()
                            .ok_or_else(|| format!("option requires an argument -- {c}"))?
                    };
                    parsed.opts.push(Opt {
                        letter: c,
                        value: Some(value),
                    });
                    break;
                }
            }
            j += 1;
        }
        i += 1;
    }
    parsed.operands = args[i.min(args.len())..].to_vec();
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_combine_and_values_attach_or_follow() {
        let p = getopt(
            &args(&["-fw", "-m1G", "-d", "a.img", "-d", "b.img", "web"]),
            "fwm:d:",
        )
        .unwrap();
        assert!(p.flag('f') && p.flag('w'));
        assert_eq!(p.value('m'), Some("1G".into()));
        assert_eq!(p.values('d'), vec!["a.img", "b.img"]);
        assert_eq!(p.operands, vec!["web"]);
    }

    #[test]
    fn options_end_at_the_first_operand_or_double_dash() {
        let p = getopt(&args(&["-f", "web", "-w"]), "fw").unwrap();
        assert!(!p.flag('w'));
        assert_eq!(p.operands, vec!["web", "-w"]);
        let p = getopt(&args(&["--", "-x"]), "f").unwrap();
        assert_eq!(p.operands, vec!["-x"]);
    }

    #[test]
    fn unknown_options_and_missing_values_are_errors() {
        assert_eq!(
            getopt(&args(&["-x"]), "f"),
            Err("unknown option -- x".into())
        );
        assert_eq!(
            getopt(&args(&["-m"]), "m:"),
            Err("option requires an argument -- m".into())
        );
    }
}
