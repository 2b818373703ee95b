//! Shared helpers for Vigil's integration tests.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A fresh directory under the temp dir for one test, removed when dropped (a failing test's
/// too, as its panic unwinds).
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `vigil-{name}-{pid}-{n}`: unique across the tests of a process and across processes.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vigil-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (and reaped) when dropped, so a failing test leaves no server
/// running; bound after the [`TempDir`] it writes to, it is dropped first.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Copies the directory `from` (recursively) to `to`, e.g. a pack a test may edit.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for e in entries {
        let p = e
            .unwrap_or_else(|e| panic!("read {}: {e}", from.display()))
            .path();
        let Some(name) = p.file_name() else { continue };
        let dest = to.join(name);
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", p.display(), dest.display()));
        }
    }
}

/// Whether golden files should be rewritten instead of compared (`VIGIL_BLESS=1`).
pub fn blessing() -> bool {
    std::env::var_os("VIGIL_BLESS").is_some_and(|v| v == "1")
}

/// Compares `got` with the golden file at `path` byte for byte, or rewrites it when blessing.
/// On a mismatch, panics naming the first differing line.
pub fn assert_golden(path: &Path, got: &[u8]) {
    if blessing() {
        std::fs::write(path, got)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        return;
    }
    let want = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run with VIGIL_BLESS=1 to create it after review",
            path.display()
        )
    });
    if want != got {
        let (w, g) = (String::from_utf8_lossy(&want), String::from_utf8_lossy(got));
        let line = w
            .lines()
            .zip(g.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| w.lines().count().min(g.lines().count()));
        panic!(
            "{} differs from this run at line {}:\n  want: {}\n  got:  {}\n(lines: want {}, got {}; VIGIL_BLESS=1 rewrites after review)",
            path.display(),
            line + 1,
            w.lines().nth(line).unwrap_or("<end>"),
            g.lines().nth(line).unwrap_or("<end>"),
            w.lines().count(),
            g.lines().count()
        );
    }
}

pub mod kafka;
