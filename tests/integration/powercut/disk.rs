/*!
The disks of the power-cut test: an ext4 file system on a loop device
whose backing file is a disk with a write cache (`cache`), mounted; and
the boot of a power-cut image (a file on tmpfs: fsck, mount). Every loop device
and mount is undone on drop, also when a test panics.
*/

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cache::CacheDisk;
use crate::support::{root_cmd, root_cmd_quiet};

/// The file systems the power cuts run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fs {
    /// ext4 as mkfs.ext4 makes it: a journal, `data=ordered`.
    Ext4Journal,
    /// ext4 without a journal (`-O ^has_journal`): directory operations that
    /// were never fsynced may be lost or half done.
    Ext4NoJournal,
}

impl Fs {
    pub const ALL: [Fs; 2] = [Fs::Ext4Journal, Fs::Ext4NoJournal];

    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4Journal => "ext4 (journal)",
            Fs::Ext4NoJournal => "ext4 (no journal)",
        }
    }

    /// mkfs.ext4 options. The lazy initialisations are off: a background
    /// thread zeroing inode tables would be a writer the test does not
    /// control.
    fn mkfs_args(self) -> Vec<&'static str> {
        let mut v = vec!["-q", "-F", "-b", "4096", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"];
        if self == Fs::Ext4NoJournal {
            v.extend(["-O", "^has_journal"]);
        }
        v
    }
}

/// Size of each file system: small, so copies are cheap.
pub const IMAGE_BYTES: u64 = 64 << 20;

/// A loop device attached to a file, detached on drop.
pub struct LoopDev {
    pub dev: String,
}

impl LoopDev {
    pub fn attach(file: &Path) -> LoopDev {
        let out = Command::new("losetup").arg("-f").arg("--show").arg(file).stdin(Stdio::null()).output().unwrap();
        assert!(out.status.success(), "losetup -f --show {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        let l = LoopDev { dev };
        // Loop devices may attach read-only here.
        root_cmd("blockdev", &["--setrw", &l.dev]);
        l
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        for _ in 0..50 {
            if root_cmd_quiet("losetup", &["-d", &self.dev]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A mounted file system, unmounted on drop (lazily if it stays busy).
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn ext4(dev: &str, dir: &Path) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        root_cmd("mount", &["-t", "ext4", dev, &dir.display().to_string()]);
        Mount { dir: dir.to_path_buf() }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        for _ in 0..50 {
            if root_cmd_quiet("umount", &[&d]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        root_cmd_quiet("umount", &["-l", &d]);
    }
}

/// The live disk: ext4 on a loop device whose backing file is the FUSE
/// disk with a write cache ([`CacheDisk`]). Fields drop in order: unmount
/// ext4, detach the loop device, unmount the FUSE disk.
pub struct Disk {
    pub mount: Mount,
    _dev: LoopDev,
    pub cache: CacheDisk,
}

impl Disk {
    /// A fresh `fs` on a cache disk at `scratch/cache`, mounted at
    /// `scratch/live`. mkfs runs on the loop device, so its writes pass
    /// through the cache like all later ones.
    pub fn create(scratch: &Path, fs: Fs) -> Disk {
        let cache = CacheDisk::mount(&scratch.join("cache"), IMAGE_BYTES as usize);
        let dev = LoopDev::attach(&cache.file());
        let mut args = fs.mkfs_args();
        args.push(&dev.dev);
        root_cmd("mkfs.ext4", &args);
        let mount = Mount::ext4(&dev.dev, &scratch.join("live"));
        Disk { mount, _dev: dev, cache }
    }
}

/// An image booted after the cut: fsck as a boot does, then mounted.
pub struct Booted {
    pub mount: Mount,
    _dev: LoopDev,
    /// e2fsck's exit status (0 when it was not run).
    pub fsck: i32,
}

/// Boot `image`: on ext4 without a journal `e2fsck -fy` first, as the
/// boot's fsck would (the journal case replays its journal at mount).
pub fn boot(image: &Path, fs: Fs, at: &Path) -> Booted {
    let dev = LoopDev::attach(image);
    let mut fsck = 0;
    if fs == Fs::Ext4NoJournal {
        let st = Command::new("e2fsck")
            .args(["-f", "-y", &dev.dev])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        fsck = st.code().unwrap_or(-1);
        assert!(fsck & !3 == 0, "e2fsck -fy {} left errors (exit {fsck})", image.display());
    }
    let mount = Mount::ext4(&dev.dev, at);
    Booted { mount, _dev: dev, fsck }
}
