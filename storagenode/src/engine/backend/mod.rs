//! Where a device's bytes live. The engine speaks only to these two traits, so a device can be a
//! directory of files ([`file::FileBackend`], the default) or memory ([`memory::MemoryBackend`], for
//! tests, with simulated power loss); other devices plug in the same way. Every backend passes the
//! conformance suite in `engine::conformance`.
//!
//! Paths are relative, `/`-separated, and never leave the backend's root.

use std::fmt;
use std::io;
use std::sync::Arc;

pub mod file;
pub mod memory;

/// A file of a backend: positioned reads and writes, and a data sync.
pub trait BlockFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed. Not durable until `sync`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Sends the range's written bytes to the device and waits until it has them, without
    /// making them durable (no cache flush, no metadata). A background writer that calls it
    /// after each chunk keeps no more than a chunk of its own in the device's queue, so a
    /// foreground sync never waits behind a whole file of it. Does nothing where there is no
    /// device.
    fn write_back(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64>;
    /// Cuts or extends the file to `size` bytes (extension reads as zeroes).
    fn set_size(&self, size: u64) -> io::Result<()>;

    /// Reads all of `buf` at `offset` if that needs no wait for the device (the bytes are in
    /// memory); `Ok(false)` when it would, with `buf` unspecified. For reads on an async
    /// thread: a backend that cannot tell answers `false`, and the caller then reads with
    /// `read_exact_at` on a thread that may block.
    fn read_exact_at_once(&self, _buf: &mut [u8], _offset: u64) -> io::Result<bool> {
        Ok(false)
    }

    /// Reads exactly `buf.len()` bytes, or fails with `UnexpectedEof`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past end of file",
                ));
            }
            done += n;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// A storage device: a namespace of files and directories.
///
/// Operations that change the namespace (`create`, `rename`, `remove`, `create_dir`,
/// `remove_dir_all`, `write_atomic`) are durable when they return: the backend syncs the parent
/// directories itself.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Opens an existing file.
    fn open(&self, path: &str) -> io::Result<Arc<dyn BlockFile>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, path: &str) -> io::Result<Arc<dyn BlockFile>>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, path: &str) -> io::Result<()>;
    /// Names of the entries of `dir`, sorted; an error if it does not exist.
    fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Creates `dir` and its parents; no error if it exists.
    fn create_dir(&self, dir: &str) -> io::Result<()>;
    fn remove_dir_all(&self, dir: &str) -> io::Result<()>;
    fn exists(&self, path: &str) -> io::Result<bool>;
    /// Replaces `path` with `bytes` all at once: after a crash it holds either the old or the new
    /// content, never a mix (write a temp file, sync it, rename it over, sync the directory).
    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    fn read_all(&self, path: &str) -> io::Result<Vec<u8>>;
    fn space(&self) -> io::Result<Space>;
    /// Where the device is, for messages.
    fn describe(&self) -> String;
}

/// Turns a file of a [`Wrapped`] backend into the one its callers get.
pub type WrapFile = dyn Fn(&str, Arc<dyn BlockFile>) -> Arc<dyn BlockFile> + Send + Sync;

/// A backend that hands every file it opens or creates through a function, and leaves everything
/// else to another backend: for tests that watch or break a device's file IO.
pub struct Wrapped {
    inner: Arc<dyn Backend>,
    wrap: Box<WrapFile>,
}

impl Wrapped {
    /// `inner`, with `wrap(path, file)` applied to every file opened or created.
    pub fn new(
        inner: Arc<dyn Backend>,
        wrap: impl Fn(&str, Arc<dyn BlockFile>) -> Arc<dyn BlockFile> + Send + Sync + 'static,
    ) -> Wrapped {
        Wrapped {
            inner,
            wrap: Box::new(wrap),
        }
    }
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wrapped")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Backend for Wrapped {
    fn open(&self, path: &str) -> io::Result<Arc<dyn BlockFile>> {
        Ok((self.wrap)(path, self.inner.open(path)?))
    }
    fn create(&self, path: &str) -> io::Result<Arc<dyn BlockFile>> {
        Ok((self.wrap)(path, self.inner.create(path)?))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn create_dir(&self, dir: &str) -> io::Result<()> {
        self.inner.create_dir(dir)
    }
    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        self.inner.remove_dir_all(dir)
    }
    fn exists(&self, path: &str) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_atomic(path, bytes)
    }
    fn read_all(&self, path: &str) -> io::Result<Vec<u8>> {
        self.inner.read_all(path)
    }
    fn space(&self) -> io::Result<Space> {
        self.inner.space()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The parent directory of a backend path (`""` for the root).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}
