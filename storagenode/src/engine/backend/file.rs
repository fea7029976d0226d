//! The default backend: a directory of ordinary files on a local filesystem.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{parent, Backend, BlockFile, Space};

#[derive(Debug)]
pub struct FileBackend {
    root: PathBuf,
}

impl FileBackend {
    /// Uses `root` (created if missing) as the device.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<FileBackend> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        Ok(FileBackend { root })
    }

    fn path(&self, relative: &str) -> io::Result<PathBuf> {
        if relative
            .split('/')
            .any(|part| part == ".." || part.starts_with('/'))
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("path {relative:?} leaves the device"),
            ));
        }
        Ok(if relative.is_empty() {
            self.root.clone()
        } else {
            self.root.join(relative)
        })
    }

    fn sync_dir(&self, dir: &str) -> io::Result<()> {
        sync_dir_path(&self.path(dir)?)
    }
}

fn sync_dir_path(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct DiskFile(File);

impl BlockFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// `preadv2` with `RWF_NOWAIT`: the kernel copies from the page cache, or answers `EAGAIN`
    /// where it would have to wait for the disk or a lock.
    fn read_exact_at_once(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let Ok(offset) = libc::off_t::try_from(offset) else {
            return Ok(false);
        };
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which outlives the call; the fd is open while `self` is.
        let n = unsafe { libc::preadv2(self.0.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if n >= 0 {
            // Fewer bytes: the rest would have waited, or the file ends; `read_exact_at` tells.
            return Ok(n as usize == buf.len());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            // Would block; or a kernel or filesystem without RWF_NOWAIT; or a signal.
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL | libc::EINTR) => Ok(false),
            _ => Err(error),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write_back(&self, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (
            libc::off64_t::try_from(offset),
            libc::off64_t::try_from(len),
        ) else {
            return Ok(());
        };
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: a plain syscall on a descriptor that is open while `self` is.
        if unsafe { libc::sync_file_range(self.0.as_raw_fd(), offset, len, flags) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_size(&self, size: u64) -> io::Result<()> {
        self.0.set_len(size)
    }
}

impl Backend for FileBackend {
    fn open(&self, path: &str) -> io::Result<Arc<dyn BlockFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(path)?)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn create(&self, path: &str) -> io::Result<Arc<dyn BlockFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(path)?)?;
        self.sync_dir(parent(path))?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from)?, self.path(to)?)?;
        self.sync_dir(parent(to))?;
        if parent(from) != parent(to) {
            self.sync_dir(parent(from))?;
        }
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        fs::remove_file(self.path(path)?)?;
        self.sync_dir(parent(path))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.path(dir)?)? {
            let name = entry?.file_name();
            names.push(name.into_string().map_err(|name| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file name {name:?} is not UTF-8"),
                )
            })?);
        }
        names.sort();
        Ok(names)
    }

    fn create_dir(&self, dir: &str) -> io::Result<()> {
        let path = self.path(dir)?;
        if path.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&path)?;
        // Sync every level that may have been created, up to the root.
        let mut level = dir;
        loop {
            level = parent(level);
            self.sync_dir(level)?;
            if level.is_empty() {
                return Ok(());
            }
        }
    }

    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        fs::remove_dir_all(self.path(dir)?)?;
        self.sync_dir(parent(dir))
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        self.path(path)?.try_exists()
    }

    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let target = self.path(path)?;
        let temp = target.with_extension("tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all_at(bytes, 0)?;
        file.sync_all()?;
        fs::rename(&temp, &target)?;
        self.sync_dir(parent(path))
    }

    fn read_all(&self, path: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(path)?)
    }

    fn space(&self) -> io::Result<Space> {
        let path =
            std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "device path has a NUL byte")
            })?;
        // SAFETY: `path` is a valid NUL-terminated string and `stat` a properly sized out-value.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let block = stat.f_frsize as u64;
        Ok(Space {
            total_bytes: stat.f_blocks as u64 * block,
            free_bytes: stat.f_bavail as u64 * block,
        })
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the kernel holds the first page of `file` in its page cache (`mincore`).
    fn first_page_cached(file: &File) -> bool {
        const PAGE: usize = 4096;
        // SAFETY: a private read-only mapping of one page of an open file, unmapped below;
        // `mincore` writes one byte per page into `resident`.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(
                map,
                libc::MAP_FAILED,
                "mmap: {}",
                io::Error::last_os_error()
            );
            let mut resident = 0u8;
            let status = libc::mincore(map, PAGE, &mut resident);
            libc::munmap(map, PAGE);
            assert_eq!(status, 0, "mincore: {}", io::Error::last_os_error());
            resident & 1 == 1
        }
    }

    #[test]
    fn a_read_at_once_copies_cached_bytes_and_declines_what_would_wait() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FileBackend::open(dir.path()).unwrap();
        let file = backend.create("f").unwrap();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
        file.write_at(&data, 0).unwrap();
        file.write_back(0, 8192).unwrap();
        file.sync().unwrap();

        let mut buf = vec![0u8; 4096];
        assert!(file.read_exact_at_once(&mut buf, 4096).unwrap());
        assert_eq!(buf, data[4096..]);
        // The file ends before the buffer does.
        assert!(!file.read_exact_at_once(&mut buf, 8192 - 100).unwrap());

        // Drop the synced pages from the page cache; a read would now wait for the disk.
        let raw = File::open(dir.path().join("f")).unwrap();
        // SAFETY: advice on an open descriptor.
        let advice =
            unsafe { libc::posix_fadvise(raw.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(advice, 0);
        if first_page_cached(&raw) {
            // tmpfs and some others keep their pages: nothing here can be read from a disk.
            println!(
                "the filesystem of {} kept its pages: eviction not tested",
                dir.path().display()
            );
            return;
        }
        // Whether the declined read starts the kernel's readahead of the page is the kernel's
        // choice (some do, some do not): only the answer is checked.
        assert!(!file.read_exact_at_once(&mut buf, 0).unwrap());
        file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, data[..4096]);
        assert!(file.read_exact_at_once(&mut buf, 0).unwrap());
    }
}
