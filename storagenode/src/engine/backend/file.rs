//! The default backend: a directory of ordinary files on a local filesystem.

use std::fs::{self, File, OpenOptions};
use std::io;
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

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
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
