/*!
A disk with a volatile write cache, for the loop device to sit on: one file,
`disk`, served over FUSE by a thread of the test. Every write the loop
device makes arrives here in order; a cache flush arrives as an fsync of
the file (the loop device turns REQ_PREFLUSH, and the FUA writes it does
not claim to support, into `vfs_fsync` of its backing file). So the disk
knows, at any moment, what is durable (the writes before the last flush)
and what is only cached (the writes since), and a power cut can keep any
part of the cache: none of it, all of it, or a random subset.

Only the FUSE requests a loop device and `losetup` make are served.
*/

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The contents of the disk.
pub struct Contents {
    /// What reads return: every write so far.
    current: Vec<u8>,
    /// What survives a power cut for sure: the writes before the last flush.
    durable: Vec<u8>,
    /// Writes since the last flush, in order: lost, or not, at a power cut.
    cached: Vec<(usize, Vec<u8>)>,
    pub writes: u64,
    pub flushes: u64,
}

/// What a power cut keeps of the cache.
#[derive(Debug, Clone, Copy)]
pub enum Keep {
    /// Nothing: the disk holds what was flushed.
    Flushed,
    /// Everything: every write reached the medium (no volatile cache).
    Written,
    /// Each cached write with chance 1/2, drawn from the seed (a disk that
    /// writes its cache back in any order).
    Some(u64),
}

impl Keep {
    pub fn name(self) -> &'static str {
        match self {
            Keep::Flushed => "flushed",
            Keep::Written => "written",
            Keep::Some(_) => "subset",
        }
    }
}

impl Contents {
    /// The disk as a power cut now would leave it.
    pub fn cut(&self, keep: Keep) -> Vec<u8> {
        match keep {
            Keep::Flushed => self.durable.clone(),
            Keep::Written => self.current.clone(),
            Keep::Some(seed) => {
                let mut img = self.durable.clone();
                let mut x = seed;
                for (off, data) in &self.cached {
                    // splitmix64 step: one bit per write.
                    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let z = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    if (z >> 40) & 1 == 1 {
                        img[*off..*off + data.len()].copy_from_slice(data);
                    }
                }
                img
            }
        }
    }

    /// Writes since the last flush.
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    fn write(&mut self, off: usize, data: &[u8]) -> bool {
        let Some(end) = off.checked_add(data.len()).filter(|e| *e <= self.current.len()) else { return false };
        self.current[off..end].copy_from_slice(data);
        self.cached.push((off, data.to_vec()));
        self.writes += 1;
        true
    }

    fn flush(&mut self) {
        for (off, data) in self.cached.drain(..) {
            self.durable[off..off + data.len()].copy_from_slice(&data);
        }
        self.flushes += 1;
    }
}

/// Called with the disk's contents when a flush arrives, before it is
/// applied: a power cut may be taken there.
pub type FlushHook = Box<dyn Fn(&Contents) + Send>;

/// The FUSE file system holding `disk`, unmounted on drop.
pub struct CacheDisk {
    pub dir: PathBuf,
    pub contents: Arc<Mutex<Contents>>,
    hook: Arc<Mutex<Option<FlushHook>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const ROOT: u64 = 1;
const DISK: u64 = 2;
const NAME: &str = "disk";
const MAX_WRITE: u32 = 1 << 20;

impl CacheDisk {
    /// A zeroed disk of `bytes`, at `dir/disk`.
    pub fn mount(dir: &Path, bytes: usize) -> CacheDisk {
        std::fs::create_dir_all(dir).unwrap();
        let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
        let contents = Arc::new(Mutex::new(Contents {
            current: vec![0; bytes],
            durable: vec![0; bytes],
            cached: Vec::new(),
            writes: 0,
            flushes: 0,
        }));
        // mount(8) needs the descriptor without close-on-exec.
        let inherited = nix::unistd::dup(&dev).unwrap();
        let hook: Arc<Mutex<Option<FlushHook>>> = Arc::new(Mutex::new(None));
        let (c, h, size) = (contents.clone(), hook.clone(), bytes as u64);
        let thread = std::thread::spawn(move || serve(dev, &c, &h, size));
        let opts = format!("fd={},rootmode=40000,user_id=0,group_id=0,allow_other", inherited.as_raw_fd());
        let st = Command::new("mount")
            .args(["-t", "fuse", "-o", &opts, "outq-cache-disk"])
            .arg(dir)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        drop(inherited);
        let disk = CacheDisk { dir: dir.to_path_buf(), contents, hook, thread: Some(thread) };
        assert!(st.success(), "mount -t fuse on {}: {st}", dir.display());
        disk
    }

    pub fn file(&self) -> PathBuf {
        self.dir.join(NAME)
    }

    pub fn on_flush(&self, hook: Option<FlushHook>) {
        *self.hook.lock().unwrap() = hook;
    }
}

impl Drop for CacheDisk {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        let mut ok = false;
        for _ in 0..50 {
            ok = Command::new("umount").arg(&d).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
            if ok {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&d).status();
        }
        // The server ends when the kernel closes the connection.
        if let Some(t) = self.thread.take() {
            if ok {
                let _ = t.join();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The FUSE protocol (linux/fuse.h), the requests a loop device needs.

const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const ACCESS: u32 = 34;
const INTERRUPT: u32 = 36;
const DESTROY: u32 = 38;
const BATCH_FORGET: u32 = 42;

const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4).map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// fuse_attr of the root directory or of the disk.
fn attr(node: u64, size: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(88);
    let (mode, nlink, sz) = if node == ROOT { (0o040_755u32, 2u32, 0) } else { (0o100_600, 1, size) };
    for v in [node, sz, sz / 512, 0, 0, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a
}

/// fuse_attr_out: valid for an hour (nothing else changes the file).
fn attr_out(node: u64, size: u64) -> Vec<u8> {
    let mut v = 3600u64.to_le_bytes().to_vec();
    v.extend_from_slice(&[0; 8]);
    v.extend(attr(node, size));
    v
}

fn reply(dev: &mut File, unique: u64, error: i32, payload: &[u8]) {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&((16 + payload.len()) as u32).to_le_bytes());
    out.extend_from_slice(&error.to_le_bytes());
    out.extend_from_slice(&unique.to_le_bytes());
    out.extend_from_slice(payload);
    // ENOENT: the request was interrupted meanwhile; nothing to do.
    let _ = dev.write_all(&out);
}

fn serve(mut dev: File, contents: &Mutex<Contents>, hook: &Mutex<Option<FlushHook>>, size: u64) {
    let mut buf = vec![0u8; MAX_WRITE as usize + 64 * 1024];
    loop {
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::ENOENT) | Some(libc::EAGAIN)) => {
                continue;
            }
            // Not mounted yet (the server starts first: mount(8) may look
            // at the mount point, which needs the server).
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            // ENODEV: unmounted.
            Err(_) => return,
        };
        let req = &buf[..n];
        let (opcode, unique, node) = (u32_at(req, 4), u64_at(req, 8), u64_at(req, 16));
        let body = req.get(40..).unwrap_or(&[]);
        match opcode {
            INIT => {
                let (minor, readahead, flags) = (u32_at(body, 4), u32_at(body, 8), u32_at(body, 12));
                let mut o = Vec::with_capacity(64);
                o.extend_from_slice(&7u32.to_le_bytes());
                o.extend_from_slice(&minor.min(31).to_le_bytes());
                o.extend_from_slice(&readahead.to_le_bytes());
                o.extend_from_slice(&(flags & (FUSE_BIG_WRITES | FUSE_MAX_PAGES)).to_le_bytes());
                o.extend_from_slice(&16u16.to_le_bytes()); // max_background
                o.extend_from_slice(&12u16.to_le_bytes()); // congestion_threshold
                o.extend_from_slice(&MAX_WRITE.to_le_bytes());
                o.extend_from_slice(&1u32.to_le_bytes()); // time_gran
                o.extend_from_slice(&((MAX_WRITE / 4096) as u16).to_le_bytes()); // max_pages
                o.resize(64, 0);
                reply(&mut dev, unique, 0, &o);
            }
            LOOKUP => {
                let name = body.split(|b| *b == 0).next().unwrap_or(&[]);
                if node == ROOT && name == NAME.as_bytes() {
                    let mut o = Vec::with_capacity(128);
                    for v in [DISK, 0, 3600, 3600] {
                        o.extend_from_slice(&v.to_le_bytes());
                    }
                    o.extend_from_slice(&[0; 8]);
                    o.extend(attr(DISK, size));
                    reply(&mut dev, unique, 0, &o);
                } else {
                    reply(&mut dev, unique, -libc::ENOENT, &[]);
                }
            }
            GETATTR | SETATTR => reply(&mut dev, unique, 0, &attr_out(node, size)),
            OPEN | OPENDIR => reply(&mut dev, unique, 0, &[0; 16]),
            READ => {
                let (off, len) = (u64_at(body, 8) as usize, u32_at(body, 16) as usize);
                let c = contents.lock().unwrap();
                let start = off.min(c.current.len());
                let end = off.saturating_add(len).min(c.current.len());
                let data = c.current[start..end].to_vec();
                drop(c);
                reply(&mut dev, unique, 0, &data);
            }
            WRITE => {
                let (off, len) = (u64_at(body, 8) as usize, u32_at(body, 16) as usize);
                let data = body.get(40..40 + len).unwrap_or(&[]);
                if data.len() == len && contents.lock().unwrap().write(off, data) {
                    let mut o = (len as u32).to_le_bytes().to_vec();
                    o.extend_from_slice(&[0; 4]);
                    reply(&mut dev, unique, 0, &o);
                } else {
                    reply(&mut dev, unique, -libc::EIO, &[]);
                }
            }
            FSYNC => {
                let mut c = contents.lock().unwrap();
                if let Some(h) = hook.lock().unwrap().as_ref() {
                    h(&c);
                }
                c.flush();
                drop(c);
                reply(&mut dev, unique, 0, &[]);
            }
            STATFS => {
                let mut o = vec![0u8; 80];
                o[40..44].copy_from_slice(&4096u32.to_le_bytes());
                o[44..48].copy_from_slice(&255u32.to_le_bytes());
                reply(&mut dev, unique, 0, &o);
            }
            READDIR => reply(&mut dev, unique, 0, &[]),
            RELEASE | RELEASEDIR | FLUSH | ACCESS => reply(&mut dev, unique, 0, &[]),
            FORGET | BATCH_FORGET | INTERRUPT => {}
            DESTROY => {
                reply(&mut dev, unique, 0, &[]);
                return;
            }
            _ => reply(&mut dev, unique, -libc::ENOSYS, &[]),
        }
    }
}
