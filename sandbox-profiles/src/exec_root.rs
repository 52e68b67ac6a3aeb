//! A root holding only some executables and what loading them needs: the
//! monitor's view of the filesystem.
//!
//! vmd plans it ([`ExecRoot::plan`]) before it forks a monitor: the
//! monitor binary, the device binaries beside it, the libraries all of
//! them load ([`elf_deps`](crate::elf_deps)), and any extra file (the
//! syslog socket), each checked by the parent. The forked child,
//! in a mount namespace of its own and still root, enters it
//! ([`ExecRoot::enter`]): a read-only, noexec tmpfs as `/`, each file
//! bind-mounted read-only at its own path (so a path the monitor knows,
//! such as its own, stays true), a `/proc` of its own that shows only
//! processes of its uid (`hidepid=invisible,subset=pid`), and an empty
//! `/tmp` where its devices build their own empty roots. Nothing else
//! exists: no /dev, no /etc, no /home, no other binary to execute.
//!
//! [`ExecRoot::enter`] runs between fork and exec of a multi-threaded
//! parent, so it only makes system calls on data prepared before the
//! fork.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Where the new root may be assembled in the child's private mount
/// namespace before it becomes `/`: the first of these that exists and
/// holds none of the files (a tmpfs mounted there hides what it holds).
const STAGING: &[&str] = &["/tmp", "/mnt", "/media", "/srv", "/var/tmp", "/opt", "/run"];

/// Why a root could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum ExecRootError {
    /// A path to put in the root is not absolute and plain.
    #[error("{0}: only absolute paths without '..' can go into the monitor's root")]
    NotPlain(PathBuf),
    /// No directory to build the root at.
    #[error("no directory of {} exists outside the files of the monitor's root", STAGING.join(", "))]
    NoStaging,
    /// A file could not be found.
    #[error("cannot use {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An executable's libraries could not be listed.
    #[error(transparent)]
    Libraries(#[from] crate::elf_deps::ElfError),
}

/// A file bind-mounted into the root.
#[derive(Debug)]
struct Bound {
    /// The source, absolute.
    source: CString,
    /// Its path inside the root, relative (no leading '/').
    target: CString,
}

/// A planned root: see the module documentation.
#[derive(Debug)]
pub struct ExecRoot {
    /// Where the root is built.
    staging: CString,
    /// Directories to create, relative, parents first.
    dirs: Vec<CString>,
    files: Vec<Bound>,
}

/// `path` relative to `/`, if it is absolute and has no `..` or `.`.
fn relative(path: &Path) -> Result<PathBuf, ExecRootError> {
    let mut parts = path.components();
    if parts.next() != Some(Component::RootDir) {
        return Err(ExecRootError::NotPlain(path.to_owned()));
    }
    let mut out = PathBuf::new();
    for part in parts {
        match part {
            Component::Normal(name) => out.push(name),
            _ => return Err(ExecRootError::NotPlain(path.to_owned())),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(ExecRootError::NotPlain(path.to_owned()));
    }
    Ok(out)
}

fn c_path(path: &Path) -> CString {
    // A path from the OS holds no NUL byte.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_default()
}

impl ExecRoot {
    /// Plans a root holding `executables`, every library they load, and
    /// `extra` files (opened as they are, e.g. a socket).
    pub fn plan(executables: &[PathBuf], extra: &[PathBuf]) -> Result<Self, ExecRootError> {
        let mut paths: BTreeSet<PathBuf> = executables.iter().cloned().collect();
        paths.extend(crate::elf_deps::libraries(executables)?);
        paths.extend(extra.iter().cloned());
        let mut dirs: BTreeSet<PathBuf> = ["proc", "tmp"].iter().map(PathBuf::from).collect();
        let mut files = Vec::new();
        for path in &paths {
            let target = relative(path)?;
            let mut parent = target.parent();
            while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(dir.to_owned());
                parent = dir.parent();
            }
            std::fs::metadata(path).map_err(|source| ExecRootError::Open {
                path: path.clone(),
                source,
            })?;
            files.push(Bound {
                source: c_path(path),
                target: c_path(&target),
            });
        }
        // BTreeSet order puts every directory before those inside it.
        let dirs = dirs.iter().map(|d| c_path(d)).collect();
        let staging = STAGING
            .iter()
            .map(Path::new)
            .find(|s| {
                s.symlink_metadata().is_ok_and(|m| m.is_dir())
                    && !paths.iter().any(|p| p.starts_with(s))
            })
            .ok_or(ExecRootError::NoStaging)?;
        Ok(Self {
            staging: c_path(staging),
            dirs,
            files,
        })
    }

    /// The paths the root will hold (for logs and tests).
    pub fn files(&self) -> impl Iterator<Item = &CStr> {
        self.files.iter().map(|f| f.target.as_c_str())
    }

    /// Makes the root planned the calling process's `/`. The caller is in
    /// a mount namespace of its own and may mount (root, before it gives
    /// that up); on failure, a line naming the step goes to stderr.
    ///
    /// Async-signal-safe: only system calls on data built by
    /// [`plan`](Self::plan), for use between fork and exec.
    pub fn enter(&self) -> io::Result<()> {
        let no: *const libc::c_char = std::ptr::null();
        let data_none: *const libc::c_void = std::ptr::null();
        let private = libc::MS_REC | libc::MS_PRIVATE;
        // SAFETY: NUL-terminated strings, NULL where the call allows one.
        let ret = unsafe { libc::mount(no, c"/".as_ptr(), no, private, data_none) };
        step(ret, b"make / private", c"/")?;
        let sealed = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        let options = c"mode=0755,size=64k";
        // SAFETY: as above.
        let ret = unsafe {
            libc::mount(
                c"vmd-root".as_ptr(),
                self.staging.as_ptr(),
                c"tmpfs".as_ptr(),
                sealed,
                options.as_ptr().cast(),
            )
        };
        step(ret, b"mount the root's tmpfs on", &self.staging)?;
        // SAFETY: a NUL-terminated path.
        let ret = unsafe { libc::chdir(self.staging.as_ptr()) };
        step(ret, b"chdir to", &self.staging)?;
        for dir in &self.dirs {
            // SAFETY: a NUL-terminated path relative to the new root.
            let ret = unsafe { libc::mkdir(dir.as_ptr(), 0o755) };
            step(ret, b"mkdir", dir)?;
        }
        for file in &self.files {
            bind(file)?;
        }
        let proc_options = c"hidepid=invisible,subset=pid";
        // SAFETY: NUL-terminated strings.
        let ret = unsafe {
            libc::mount(
                c"proc".as_ptr(),
                c"proc".as_ptr(),
                c"proc".as_ptr(),
                sealed,
                proc_options.as_ptr().cast(),
            )
        };
        step(ret, b"mount a proc of its own on", c"/proc")?;
        // pivot_root(".", "."): the old root ends up under the new one and
        // is detached at once.
        // SAFETY: two NUL-terminated paths.
        let ret = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
        step(ret as libc::c_int, b"pivot_root into", &self.staging)?;
        // SAFETY: a NUL-terminated path.
        let ret = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
        step(ret, b"detach the old root", c"/")?;
        // SAFETY: a NUL-terminated path.
        step(unsafe { libc::chdir(c"/".as_ptr()) }, b"chdir to", c"/")?;
        let readonly = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | sealed;
        // SAFETY: NUL-terminated strings, NULL where the call allows one.
        let ret = unsafe { libc::mount(no, c"/".as_ptr(), no, readonly, data_none) };
        step(ret, b"make read-only", c"/")
    }
}

/// `Ok` if a call returned 0; otherwise reports the step (without
/// allocating) and returns the OS error.
fn step(ret: libc::c_int, what: &'static [u8], path: &CStr) -> io::Result<()> {
    if ret == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    report_failure(what, path, error.raw_os_error().unwrap_or(0));
    Err(error)
}

/// Bind-mounts `file` read-only (still executable) at its path.
fn bind(file: &Bound) -> io::Result<()> {
    let flags = libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: a NUL-terminated path relative to the new root.
    let fd = unsafe { libc::open(file.target.as_ptr(), flags, 0o444) };
    step(if fd < 0 { -1 } else { 0 }, b"create", &file.target)?;
    // SAFETY: an fd this function just opened.
    unsafe { libc::close(fd) };
    let no: *const libc::c_char = std::ptr::null();
    let data_none: *const libc::c_void = std::ptr::null();
    // SAFETY: NUL-terminated strings, NULL where the call allows one.
    let ret = unsafe {
        libc::mount(
            file.source.as_ptr(),
            file.target.as_ptr(),
            no,
            libc::MS_BIND,
            data_none,
        )
    };
    step(ret, b"bind-mount", &file.target)?;
    let readonly =
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: as above.
    let ret = unsafe { libc::mount(no, file.target.as_ptr(), no, readonly, data_none) };
    step(ret, b"make read-only", &file.target)
}

/// Writes "monitor root: cannot WHAT PATH: errno N" to stderr without
/// allocating.
fn report_failure(what: &[u8], path: &CStr, errno: i32) {
    let mut number = [0u8; 12];
    let mut at = number.len();
    let mut n = errno.unsigned_abs();
    loop {
        at -= 1;
        number[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let parts: [&[u8]; 7] = [
        b"monitor root: cannot ",
        what,
        b" ",
        path.to_bytes(),
        b": errno ",
        &number[at..],
        b"\n",
    ];
    for part in parts {
        // SAFETY: writes bytes from a live slice to fd 2.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_plain_paths_are_accepted() {
        assert_eq!(
            relative(Path::new("/usr/lib/x")).unwrap(),
            PathBuf::from("usr/lib/x")
        );
        for bad in ["usr/lib", "/usr/../etc/passwd", "/"] {
            let err = relative(Path::new(bad)).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn the_plan_holds_the_executable_its_libraries_and_parents_first() {
        let exe = std::env::current_exe().unwrap();
        let root = ExecRoot::plan(std::slice::from_ref(&exe), &[]).unwrap();
        let files: Vec<String> = root
            .files()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        let own = relative(&exe).unwrap().to_string_lossy().into_owned();
        assert!(files.contains(&own), "{files:?}");
        assert!(files.iter().any(|f| f.ends_with("/libc.so.6")), "{files:?}");
        let dirs: Vec<String> = root
            .dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        assert!(dirs.contains(&"proc".to_string()) && dirs.contains(&"tmp".to_string()));
        for file in &files {
            let parent = Path::new(file)
                .parent()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            assert!(dirs.contains(&parent), "{parent} missing from {dirs:?}");
        }
        for (i, dir) in dirs.iter().enumerate() {
            if let Some(parent) = Path::new(dir)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                let p = dirs.iter().position(|d| Path::new(d) == parent).unwrap();
                assert!(p < i, "{parent:?} comes after {dir}");
            }
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = ExecRoot::plan(&[PathBuf::from("/nonexistent/vmm-monitor")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/vmm-monitor"), "{err}");
    }

    /// Set in the child of [`entering_the_root_leaves_only_its_files`].
    const IN_ROOT_ENV: &str = "EXEC_ROOT_TEST_IN_ROOT";

    /// In the child, inside the root: what it must and must not see.
    #[test]
    fn in_root_child() {
        if std::env::var_os(IN_ROOT_ENV).is_none() {
            return;
        }
        let exe = std::env::current_exe().unwrap();
        assert!(exe.is_file(), "its own binary at {exe:?}");
        for gone in [
            "/etc/passwd",
            "/bin/sh",
            "/dev/null",
            "/home",
            "/proc/sys",
            "/proc/1",
        ] {
            assert!(!Path::new(gone).exists(), "{gone} is visible");
        }
        assert!(Path::new("/proc/self/status").is_file());
        // /tmp holds nothing but the way to this binary, if it is there.
        let own = exe.strip_prefix("/tmp").ok().and_then(|p| p.iter().next());
        for entry in std::fs::read_dir("/tmp").unwrap() {
            let name = entry.unwrap().file_name();
            assert_eq!(Some(name.as_os_str()), own, "/tmp holds {name:?}");
        }
        let err = std::fs::write("/tmp/x", b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        // Only processes of its own uid: the root test itself runs as root,
        // so this child (uid 65534) sees only itself.
        let pids: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .collect();
        assert_eq!(pids, [std::process::id()], "/proc shows {pids:?}");
    }

    #[test]
    fn entering_the_root_leaves_only_its_files() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED entering_the_root_leaves_only_its_files: needs root");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let root = ExecRoot::plan(std::slice::from_ref(&exe), &[]).unwrap();
        let mut command = std::process::Command::new(&exe);
        command
            .args(["--exact", "exec_root::tests::in_root_child", "--nocapture"])
            .env(IN_ROOT_ENV, "1");
        // SAFETY: the closure makes only system calls (unshare, then
        // ExecRoot::enter, then setresgid/setresuid) on data built before
        // the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                root.enter()?;
                if libc::setresgid(65534, 65534, 65534) != 0
                    || libc::setresuid(65534, 65534, 65534) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
