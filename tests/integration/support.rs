/*!
Test support: run the built binaries and assert on what they did.
*/

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of a workspace binary. `outq` is built for this test by cargo; the
/// helper lives in its own package and is built by `cargo build --workspace`
/// (the README's test command runs that first).
pub fn bin(name: &str) -> PathBuf {
    let outq = PathBuf::from(env!("CARGO_BIN_EXE_outq"));
    let p = outq.with_file_name(name);
    assert!(p.exists(), "{} is not built: run 'cargo build --workspace' before the tests", p.display());
    p
}

/// The result of running a program.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn from_output(o: Output) -> Ran {
        Ran {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "unexpected exit status\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Ran {
        assert!(self.stderr.contains(needle), "stderr lacks {needle:?}: {}", self.stderr);
        self
    }

    /// The helper's contract: one error line `outq-enqueue: WHAT (FIX)`.
    #[track_caller]
    pub fn assert_one_error_line(&self) -> &Ran {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {:?}", self.stderr);
        let l = lines[0];
        assert!(l.starts_with("outq-enqueue: ") && l.ends_with(')') && l.contains(" ("), "malformed error line {l:?}");
        self
    }

    /// The queue ID printed on success.
    #[track_caller]
    pub fn queue_id(&self) -> String {
        self.assert_code(0);
        let id = self.stdout.trim_end().to_owned();
        assert_eq!(self.stdout, format!("{id}\n"));
        assert_eq!(id.len(), 26, "bad queue id {id:?}");
        id
    }
}

/// Run `cmd` with `input` on standard input.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Ran {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    // Write from a thread: the child may exit early without reading it all.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait");
    let _ = writer.join();
    Ran::from_output(out)
}

/// A spool for the helper in development mode, made by hand with the
/// layout's modes and the current user's group (works as root or not).
pub struct DevSpool {
    pub dir: tempfile::TempDir,
}

impl DevSpool {
    pub fn new() -> DevSpool {
        let dir = tempfile::Builder::new().prefix("outq-test-").tempdir().unwrap();
        let root = dir.path().join("spool");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        for p in outq_spool::layout::PARTS.iter().filter(|p| !p.name.is_empty()) {
            let path = root.join(p.name);
            match p.kind {
                outq_spool::layout::Kind::Dir => std::fs::create_dir(&path).unwrap(),
                outq_spool::layout::Kind::File => drop(std::fs::File::create(&path).unwrap()),
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(p.mode)).unwrap();
        }
        DevSpool { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// A configuration file in the temporary directory.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("outq.conf");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        p
    }

    /// The helper with `--spool` (and a config that keeps the free-space
    /// reserve small so tests run on small disks too).
    pub fn helper(&self) -> Command {
        let cfg = self.dir.path().join("outq.conf");
        if !cfg.exists() {
            self.write_config("spool_min_free = 0\n");
        }
        let mut c = Command::new(bin("outq-enqueue"));
        c.arg("--spool").arg(self.root()).arg("--config").arg(cfg);
        c
    }

    pub fn names(&self, sub: &str) -> Vec<String> {
        list(&self.root().join(sub))
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

pub fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// A 4 KB message with headers.
pub fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: test\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr\r\n");
    }
    m.truncate(size);
    m
}
