//! `vmctl create [-b base | -i disk] [-s size] disk`: new disk images.
//!
//! The argument rules are vmctl(8)'s: the output format comes from a
//! `raw:`/`qcow2:` prefix of `disk`, else a `.qcow2` extension, else raw;
//! `-b` (a qcow2 overlay of a base) and `-i` (a copy of an input image)
//! exclude each other; without either, `-s` is required. `-s` takes a
//! human size (`4.5G`) rounded up to whole MB. The work is done by
//! [`dev_block::disk::create`].

use std::path::Path;

use dev_block::disk::create::{self as image, round_size_mb};
use dev_block::disk::Format;
use ipc::size::{parse_size, SizeError};

use crate::progress::Progress;

/// The arguments of `vmctl create`, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateArgs {
    /// The new image, optionally prefixed `raw:` or `qcow2:`.
    pub disk: String,
    /// `-b`: base image of a qcow2 overlay.
    pub base: Option<String>,
    /// `-i`: image to copy.
    pub input: Option<String>,
    /// `-s`: size.
    pub size: Option<String>,
}

/// Why `vmctl create` failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Neither `-s`, `-b` nor `-i`.
    #[error("missing size argument")]
    MissingSize,
    /// Both `-b` and `-i`.
    #[error("-b and -i are mutually exclusive")]
    BaseAndInput,
    /// `-b` with an output that is not qcow2.
    #[error("{disk}: base images require the qcow2 disk format")]
    BaseNeedsQcow2 {
        /// The disk argument.
        disk: String,
    },
    /// An empty disk path (`qcow2:` alone, say).
    #[error("missing disk path")]
    MissingDisk,
    /// `-s` does not parse.
    #[error("invalid size")]
    Size(#[from] SizeError),
    /// Creating or converting the image failed.
    #[error(transparent)]
    Image(#[from] image::CreateError),
}

/// What to create, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan<'a> {
    /// An empty image of `size` bytes.
    Empty { size: u64 },
    /// A qcow2 overlay of `base`; `size` must match it if given.
    Overlay { base: &'a Path, size: Option<u64> },
    /// A copy of `input`, of `size` bytes if given.
    Convert { input: &'a Path, size: Option<u64> },
}

/// `disk`'s format and path: a `raw:`/`qcow2:` prefix wins, then a
/// `.qcow2` extension (any case), else raw.
fn disk_format(disk: &str) -> (Format, &str) {
    if let Some(path) = disk.strip_prefix("raw:") {
        return (Format::Raw, path);
    }
    if let Some(path) = disk.strip_prefix("qcow2:") {
        return (Format::Qcow2, path);
    }
    let qcow2 = Path::new(disk)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("qcow2"));
    (if qcow2 { Format::Qcow2 } else { Format::Raw }, disk)
}

/// Checks the argument combination and parses the size.
fn plan<'a>(args: &'a CreateArgs, format: Format) -> Result<Plan<'a>, CreateError> {
    let size = args
        .size
        .as_deref()
        .map(|s| Ok::<_, CreateError>(round_size_mb(parse_size(s)?)?))
        .transpose()?;
    match (&args.base, &args.input, size) {
        (Some(_), Some(_), _) => Err(CreateError::BaseAndInput),
        (Some(_), None, _) if format != Format::Qcow2 => Err(CreateError::BaseNeedsQcow2 {
            disk: args.disk.clone(),
        }),
        (Some(base), None, size) => Ok(Plan::Overlay {
            base: Path::new(base),
            size,
        }),
        (None, Some(input), size) => Ok(Plan::Convert {
            input: Path::new(input),
            size,
        }),
        (None, None, Some(size)) => Ok(Plan::Empty { size }),
        (None, None, None) => Err(CreateError::MissingSize),
    }
}

/// Runs `vmctl create`; on success returns the message vmctl prints after
/// `vmctl: ` (`qcow2 imagefile created`). A copy (`-i`) shows a progress
/// bar on stderr when that is a terminal. The output is never an existing
/// file, and nothing is left behind on failure.
pub fn run(args: &CreateArgs) -> Result<String, CreateError> {
    let (format, path) = disk_format(&args.disk);
    if path.is_empty() {
        return Err(CreateError::MissingDisk);
    }
    let path = Path::new(path);
    match plan(args, format)? {
        Plan::Empty { size } => match format {
            Format::Raw => image::create_raw(path, size)?,
            Format::Qcow2 => image::create_qcow2(path, Some(size), None)?,
        },
        Plan::Overlay { base, size } => image::create_qcow2(path, size, Some(base))?,
        Plan::Convert { input, size } => {
            let mut bar = Progress::new();
            image::convert(input, path, format, size, &mut |done, total| {
                bar.update(done, total)
            })?;
            bar.finish();
        }
    }
    Ok(format!("{} imagefile created", format.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(disk: &str, base: Option<&str>, input: Option<&str>, size: Option<&str>) -> CreateArgs {
        CreateArgs {
            disk: disk.into(),
            base: base.map(Into::into),
            input: input.map(Into::into),
            size: size.map(Into::into),
        }
    }

    /// A fresh directory under the system's temporary directory, removed
    /// on drop (vmctl has no tempfile dev-dependency).
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "vmctl-create-{tag}-{}-{:?}",
                std::process::id(),
                std::time::SystemTime::now()
            ));
            std::fs::create_dir(&p).unwrap();
            Self(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Every error's full message, causes included.
    fn message(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            s += &format!(": {c}");
            cause = c.source();
        }
        s
    }

    #[test]
    fn disk_format_prefix_then_extension_then_raw() {
        assert_eq!(disk_format("raw:a.qcow2"), (Format::Raw, "a.qcow2"));
        assert_eq!(disk_format("qcow2:a.img"), (Format::Qcow2, "a.img"));
        assert_eq!(disk_format("/x/a.QCOW2"), (Format::Qcow2, "/x/a.QCOW2"));
        assert_eq!(disk_format("a.img"), (Format::Raw, "a.img"));
        assert_eq!(disk_format("qcow2"), (Format::Raw, "qcow2"));
    }

    #[test]
    fn plan_argument_rules() {
        let q = Format::Qcow2;
        assert!(matches!(
            plan(&args("a", None, None, None), q),
            Err(CreateError::MissingSize)
        ));
        assert!(matches!(
            plan(&args("a", Some("b"), Some("i"), None), q),
            Err(CreateError::BaseAndInput)
        ));
        assert!(matches!(
            plan(&args("a.img", Some("b"), None, None), Format::Raw),
            Err(CreateError::BaseNeedsQcow2 { .. })
        ));
        assert_eq!(
            plan(&args("a", None, None, Some("4.5G")), q).unwrap(),
            Plan::Empty { size: 9 << 29 }
        );
        // Rounded up to whole MB.
        assert_eq!(
            plan(&args("a", None, None, Some("1500k")), q).unwrap(),
            Plan::Empty { size: 2 << 20 }
        );
        assert!(matches!(
            plan(&args("a", None, None, Some("0")), q),
            Err(CreateError::Image(image::CreateError::SizeTooSmall))
        ));
        assert!(matches!(
            plan(&args("a", None, None, Some("lots")), q),
            Err(CreateError::Size(_))
        ));
        assert_eq!(
            plan(&args("a", None, Some("in"), None), q).unwrap(),
            Plan::Convert {
                input: Path::new("in"),
                size: None
            }
        );
    }

    #[test]
    fn run_creates_each_kind_and_reports_it() {
        let dir = TempDir::new("kinds");
        let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
        let raw = p("a.img");
        let msg = run(&args(&raw, None, None, Some("3M"))).unwrap();
        assert_eq!(msg, "raw imagefile created");
        assert_eq!(std::fs::metadata(&raw).unwrap().len(), 3 << 20);

        let q = p("b.qcow2");
        let msg = run(&args(&q, None, None, Some("1"))).unwrap();
        assert_eq!(msg, "qcow2 imagefile created");
        assert_eq!(
            Format::probe(&std::fs::File::open(&q).unwrap()).unwrap(),
            Format::Qcow2
        );

        // A prefix beats the extension.
        let forced = p("c.qcow2");
        run(&args(&format!("raw:{forced}"), None, None, Some("1M"))).unwrap();
        assert_eq!(
            Format::probe(&std::fs::File::open(&forced).unwrap()).unwrap(),
            Format::Raw
        );

        let top = p("top.qcow2");
        let msg = run(&args(&top, Some("b.qcow2"), None, None)).unwrap();
        assert_eq!(msg, "qcow2 imagefile created");

        let copy = p("copy.img");
        let msg = run(&args(&copy, None, Some(&top), Some("2M"))).unwrap();
        assert_eq!(msg, "raw imagefile created");
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), 2 << 20);
    }

    #[test]
    fn run_errors_name_the_path() {
        let dir = TempDir::new("errors");
        let existing = dir.path().join("e.img");
        std::fs::write(&existing, b"x").unwrap();
        let e = run(&args(existing.to_str().unwrap(), None, None, Some("1M"))).unwrap_err();
        assert!(
            message(&e).contains("e.img: file exists"),
            "{}",
            message(&e)
        );

        let out = dir.path().join("o.qcow2");
        let e = run(&args(
            out.to_str().unwrap(),
            None,
            Some("/nonexistent/in.img"),
            None,
        ))
        .unwrap_err();
        assert!(
            message(&e).contains("/nonexistent/in.img"),
            "{}",
            message(&e)
        );
        assert!(!out.exists());

        let base = dir.path().join("base.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let e = run(&args(
            out.to_str().unwrap(),
            Some("base.img"),
            None,
            Some("2M"),
        ))
        .unwrap_err();
        assert!(message(&e).contains("base.img"), "{}", message(&e));
        assert!(!out.exists());

        let e = run(&args("qcow2:", None, None, Some("1M"))).unwrap_err();
        assert!(matches!(e, CreateError::MissingDisk));
    }
}
