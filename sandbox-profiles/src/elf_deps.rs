//! The shared libraries an executable loads: its ELF program interpreter
//! (`PT_INTERP`) and its `DT_NEEDED` entries, resolved the way the
//! dynamic loader resolves them on a glibc host without a cache
//! (`DT_RPATH`/`DT_RUNPATH` with `$ORIGIN`, then the system directories),
//! and so on for each library found. [`exec_root`](crate::exec_root) puts
//! exactly these files into a root of their own.
//!
//! Only 64-bit little-endian ELF (x86_64) is read; anything else is an
//! error naming the file. A static executable has no interpreter and
//! needs nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where the loader looks for a library named without a slash, in its
/// order, after the object's own run paths (Debian's multiarch first).
pub const SYSTEM_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// Why an executable's libraries could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an ELF object this reader understands.
    #[error("{path}: {what}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, at which offset.
        what: String,
    },
    /// A library it needs is in none of the places the loader looks.
    #[error("{path} needs {library}, which is not in {searched}")]
    NotFound {
        /// The object that needs it.
        path: PathBuf,
        /// The `DT_NEEDED` name.
        library: String,
        /// The directories looked in.
        searched: String,
    },
}

/// What one ELF object asks of the loader.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dynamic {
    /// `PT_INTERP`: the loader's path (executables only).
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH`, else `DT_RPATH`, split at ':'.
    pub run_paths: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

/// Reads `buf.len()` bytes at an offset of the object, or says why not.
type ReadAt<'a> = &'a dyn Fn(u64, &mut [u8]) -> Result<(), String>;

struct Reader<'a> {
    read_at: ReadAt<'a>,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, offset: u64) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        (self.read_at)(offset, &mut b)?;
        Ok(b)
    }

    fn vec(&self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        if len > MAX_STRING {
            return Err(format!("{len} bytes at {offset:#x} is implausibly long"));
        }
        let mut b = vec![0u8; len as usize];
        (self.read_at)(offset, &mut b)?;
        Ok(b)
    }

    fn u16(&self, offset: u64) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.bytes(offset)?))
    }

    fn u32(&self, offset: u64) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(offset)?))
    }

    fn u64(&self, offset: u64) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes(offset)?))
    }

    /// The NUL-terminated string at `offset` (at most [`MAX_STRING`]).
    fn string(&self, offset: u64) -> Result<String, String> {
        let mut text = Vec::new();
        while (text.len() as u64) < MAX_STRING {
            let at = offset + text.len() as u64;
            let byte: [u8; 1] = self
                .bytes(at)
                .map_err(|_| format!("string at {offset:#x} has no terminating NUL"))?;
            if byte[0] == 0 {
                return String::from_utf8(text)
                    .map_err(|_| format!("string at {offset:#x} is not UTF-8"));
            }
            text.push(byte[0]);
        }
        Err(format!("string at {offset:#x} is implausibly long"))
    }
}

/// The longest path or name this reader accepts.
const MAX_STRING: u64 = 4096;

/// A [`ReadAt`] over bytes in memory.
fn in_memory(bytes: &[u8]) -> impl Fn(u64, &mut [u8]) -> Result<(), String> + '_ {
    move |offset, buf| {
        let start = usize::try_from(offset).map_err(|_| format!("offset {offset:#x}"))?;
        let slice = start
            .checked_add(buf.len())
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| {
                format!(
                    "{} bytes at {offset:#x} run past the end of the file",
                    buf.len()
                )
            })?;
        buf.copy_from_slice(slice);
        Ok(())
    }
}

/// One program header: (type, file offset, virtual address, size in file).
type Segment = (u32, u64, u64, u64);

/// Reads what an ELF object asks of the loader from its bytes.
pub fn parse(bytes: &[u8]) -> Result<Dynamic, String> {
    parse_with(&in_memory(bytes))
}

/// [`parse`] reading only the headers, tables and strings it needs.
fn parse_with(read_at: ReadAt<'_>) -> Result<Dynamic, String> {
    let r = Reader { read_at };
    let ident: [u8; 6] = r.bytes(0).map_err(|_| "not an ELF file".to_string())?;
    if ident[..4] != *b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let (class, data) = (ident[4], ident[5]);
    if class != 2 || data != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let phoff = r.u64(0x20)?;
    let phentsize = u64::from(r.u16(0x36)?);
    let phnum = u64::from(r.u16(0x38)?);
    if phnum > 1024 {
        return Err(format!("{phnum} program headers"));
    }
    if phentsize < 56 {
        return Err(format!("program header size {phentsize} is below 56"));
    }
    let mut segments: Vec<Segment> = Vec::new();
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        segments.push((r.u32(at)?, r.u64(at + 8)?, r.u64(at + 16)?, r.u64(at + 32)?));
    }
    let mut dynamic = Dynamic::default();
    if let Some(&(_, offset, _, size)) = segments.iter().find(|s| s.0 == PT_INTERP) {
        let text = r.vec(offset, size)?;
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        dynamic.interpreter = Some(
            String::from_utf8(text[..end].to_vec())
                .map_err(|_| "PT_INTERP is not UTF-8".to_string())?,
        );
    }
    let Some(&(_, offset, _, size)) = segments.iter().find(|s| s.0 == PT_DYNAMIC) else {
        return Ok(dynamic);
    };
    let mut entries = Vec::new();
    for i in 0..(size / 16).min(4096) {
        let tag = r.u64(offset + i * 16)?;
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, r.u64(offset + i * 16 + 8)?));
    }
    let strtab_vaddr = entries
        .iter()
        .find(|e| e.0 == DT_STRTAB)
        .map(|e| e.1)
        .ok_or("PT_DYNAMIC has no DT_STRTAB")?;
    // DT_STRTAB is an address: find the file offset of the PT_LOAD
    // segment that holds it.
    let strtab = segments
        .iter()
        .filter(|s| s.0 == PT_LOAD)
        .find(|&&(_, _, vaddr, filesz)| strtab_vaddr >= vaddr && strtab_vaddr - vaddr < filesz)
        .map(|&(_, off, vaddr, _)| off + (strtab_vaddr - vaddr))
        .ok_or_else(|| format!("DT_STRTAB {strtab_vaddr:#x} is in no loaded segment"))?;
    let string = |value: u64| r.string(strtab + value);
    let mut rpath = None;
    let mut runpath = None;
    for &(tag, value) in &entries {
        match tag {
            DT_NEEDED => dynamic.needed.push(string(value)?),
            DT_RPATH => rpath = Some(string(value)?),
            DT_RUNPATH => runpath = Some(string(value)?),
            _ => {}
        }
    }
    if let Some(paths) = runpath.or(rpath) {
        dynamic.run_paths = paths
            .split(':')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
    }
    Ok(dynamic)
}

fn read_dynamic(path: &Path) -> Result<Dynamic, ElfError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|source| ElfError::Read {
        path: path.to_owned(),
        source,
    })?;
    let read_at = |offset: u64, buf: &mut [u8]| {
        file.read_exact_at(buf, offset)
            .map_err(|e| format!("{} bytes at {offset:#x}: {e}", buf.len()))
    };
    parse_with(&read_at).map_err(|what| ElfError::Malformed {
        path: path.to_owned(),
        what,
    })
}

/// The run path `dir` of the object at `object`, `$ORIGIN` expanded.
fn expand_origin(dir: &str, object: &Path) -> PathBuf {
    let origin = object.parent().unwrap_or(Path::new("/"));
    let origin = origin.to_string_lossy();
    PathBuf::from(
        dir.replace("${ORIGIN}", &origin)
            .replace("$ORIGIN", &origin),
    )
}

/// Every file the loader opens to start each of `executables`: the
/// interpreters and the libraries, each once, at the path where it was
/// found (a symlinked path, as the loader would open it).
pub fn libraries(executables: &[PathBuf]) -> Result<BTreeSet<PathBuf>, ElfError> {
    let mut found = BTreeSet::new();
    let mut pending: Vec<PathBuf> = executables.to_vec();
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    while let Some(object) = pending.pop() {
        if !seen.insert(object.clone()) {
            continue;
        }
        let dynamic = read_dynamic(&object)?;
        if let Some(interpreter) = dynamic.interpreter {
            let interpreter = PathBuf::from(interpreter);
            found.insert(interpreter.clone());
            pending.push(interpreter);
        }
        for library in &dynamic.needed {
            let path = if library.contains('/') {
                Some(PathBuf::from(library))
            } else {
                let dirs: Vec<PathBuf> = dynamic
                    .run_paths
                    .iter()
                    .map(|d| expand_origin(d, &object))
                    .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
                    .collect();
                dirs.iter().map(|d| d.join(library)).find(|p| p.is_file())
            };
            let Some(path) = path.filter(|p| p.is_file()) else {
                return Err(ElfError::NotFound {
                    path: object,
                    library: library.clone(),
                    searched: SYSTEM_DIRS.join(", "),
                });
            };
            // A library named by an interpreter path is the same file.
            if found.insert(path.clone()) {
                pending.push(path);
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 image: header, given program headers, then `tail`.
    fn elf(segments: &[(u32, u64, u64, u64)], tail: &[u8], tail_at: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&(segments.len() as u16).to_le_bytes());
        for &(kind, offset, vaddr, size) in segments {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&kind.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&vaddr.to_le_bytes());
            ph[32..40].copy_from_slice(&size.to_le_bytes());
            b.extend(ph);
        }
        b.resize(tail_at as usize, 0);
        b.extend_from_slice(tail);
        b
    }

    #[test]
    fn reads_interpreter_needed_and_runpath_through_the_load_segment() {
        // At 0x200: strings; at 0x300: the dynamic table. The strings are
        // loaded at 0x10000 + 0x200.
        let mut tail = vec![0u8; 0x200];
        let strings = b"\0libfoo.so.1\0libbar.so.2\0$ORIGIN/../lib\0/lib64/ld.so\0";
        tail[..strings.len()].copy_from_slice(strings);
        let dyn_entries: [(u64, u64); 5] = [
            (DT_STRTAB, 0x10200),
            (DT_NEEDED, 1),
            (DT_NEEDED, 13),
            (DT_RUNPATH, 25),
            (DT_NULL, 0),
        ];
        for (i, (tag, value)) in dyn_entries.iter().enumerate() {
            let at = 0x100 + i * 16;
            tail[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            tail[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
        }
        let image = elf(
            &[
                (PT_INTERP, 0x200 + 40, 0, 13),
                (PT_LOAD, 0, 0x10000, 0x400),
                (PT_DYNAMIC, 0x300, 0x10300, 80),
            ],
            &tail,
            0x200,
        );
        let parsed = parse(&image).unwrap();
        assert_eq!(parsed.interpreter.as_deref(), Some("/lib64/ld.so"));
        assert_eq!(parsed.needed, ["libfoo.so.1", "libbar.so.2"]);
        assert_eq!(parsed.run_paths, ["$ORIGIN/../lib"]);
        assert_eq!(
            expand_origin("$ORIGIN/../lib", Path::new("/opt/x/bin/tool")),
            PathBuf::from("/opt/x/bin/../lib")
        );
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_not_panics() {
        assert!(parse(b"#!/bin/sh\n").unwrap_err().contains("not an ELF"));
        let mut image = elf(&[(PT_DYNAMIC, 0x1000, 0, 64)], &[], 0x100);
        assert!(parse(&image).unwrap_err().contains("past the end"));
        image[4] = 1;
        assert!(parse(&image).unwrap_err().contains("64-bit"));
        // Every prefix of a real binary fails cleanly or parses.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for len in [0, 3, 20, 63, 64, 100, 500] {
            let _ = parse(&exe[..len]);
        }
    }

    #[test]
    fn this_test_binary_needs_libc_and_its_loader_found_on_this_host() {
        let exe = std::env::current_exe().unwrap();
        let libs = libraries(std::slice::from_ref(&exe)).unwrap();
        let names: Vec<String> = libs
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "libc.so.6"), "{libs:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{libs:?}");
        assert!(libs.iter().all(|p| p.is_file()), "{libs:?}");
    }

    #[test]
    fn a_missing_library_names_the_object_and_the_library() {
        let dir = std::env::temp_dir().join(format!("elf-deps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut tail = vec![0u8; 0x100];
        tail[..16].copy_from_slice(b"\0libnothere.so\0\0");
        for (i, (tag, value)) in [(DT_STRTAB, 0x200u64), (DT_NEEDED, 1), (DT_NULL, 0)]
            .iter()
            .enumerate()
        {
            let at = 0x40 + i * 16;
            tail[at..at + 8].copy_from_slice(&tag.to_le_bytes());
            tail[at + 8..at + 16].copy_from_slice(&value.to_le_bytes());
        }
        let image = elf(
            &[(PT_LOAD, 0, 0, 0x300), (PT_DYNAMIC, 0x240, 0x240, 48)],
            &tail,
            0x200,
        );
        let path = dir.join("tool");
        std::fs::write(&path, image).unwrap();
        let err = libraries(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("tool") && err.contains("libnothere.so"),
            "{err}"
        );
    }
}
