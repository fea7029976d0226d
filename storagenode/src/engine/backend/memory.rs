//! A backend in memory, for tests. It models a disk with a volatile cache: writes become durable
//! only when their file is synced, and [`MemoryBackend::crash`] throws away everything that was
//! not, as a power loss would. Namespace changes are durable at once, as the trait promises.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{parent, Backend, BlockFile, Space};

#[derive(Default)]
struct Contents {
    /// What reads see.
    current: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
}

#[derive(Default)]
struct MemFile {
    contents: Mutex<Contents>,
    sync_delay: std::time::Duration,
}

impl BlockFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let contents = self.contents.lock();
        let start = (offset as usize).min(contents.current.len());
        let n = buf.len().min(contents.current.len() - start);
        buf[..n].copy_from_slice(&contents.current[start..start + n]);
        Ok(n)
    }

    fn read_exact_at_once(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.read_exact_at(buf, offset).map(|()| true)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut contents = self.contents.lock();
        let end = offset as usize + buf.len();
        if contents.current.len() < end {
            contents.current.resize(end, 0);
        }
        contents.current[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        if !self.sync_delay.is_zero() {
            std::thread::sleep(self.sync_delay);
        }
        let mut contents = self.contents.lock();
        contents.durable = contents.current.clone();
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.contents.lock().current.len() as u64)
    }

    fn set_size(&self, size: u64) -> io::Result<()> {
        // Like ftruncate, the new size is durable only after a sync.
        self.contents.lock().current.resize(size as usize, 0);
        Ok(())
    }
}

#[derive(Default)]
struct Namespace {
    files: BTreeMap<String, Arc<MemFile>>,
    dirs: std::collections::BTreeSet<String>,
}

#[derive(Clone)]
pub struct MemoryBackend {
    namespace: Arc<Mutex<Namespace>>,
    capacity_bytes: u64,
    sync_delay: std::time::Duration,
}

impl std::fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemoryBackend({} files)",
            self.namespace.lock().files.len()
        )
    }
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{path}: no such file"))
}

impl MemoryBackend {
    pub fn new(capacity_bytes: u64) -> MemoryBackend {
        let mut namespace = Namespace::default();
        namespace.dirs.insert(String::new());
        MemoryBackend {
            namespace: Arc::new(Mutex::new(namespace)),
            capacity_bytes,
            sync_delay: std::time::Duration::ZERO,
        }
    }

    /// Makes every sync of files created from now on take `delay`, like a slow disk.
    pub fn with_sync_delay(mut self, delay: std::time::Duration) -> MemoryBackend {
        self.sync_delay = delay;
        self
    }

    /// Simulates a power loss: every file loses the writes made since its last sync. Handles
    /// opened before the crash see the same loss; the engine must be reopened, as after a reboot.
    pub fn crash(&self) {
        for file in self.namespace.lock().files.values() {
            let mut contents = file.contents.lock();
            contents.current = contents.durable.clone();
        }
    }

    fn check_dir(namespace: &Namespace, path: &str) -> io::Result<()> {
        let dir = parent(path);
        if namespace.dirs.contains(dir) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{dir}: no such directory"),
            ))
        }
    }
}

impl Backend for MemoryBackend {
    fn open(&self, path: &str) -> io::Result<Arc<dyn BlockFile>> {
        let namespace = self.namespace.lock();
        let file = namespace.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(file.clone())
    }

    fn create(&self, path: &str) -> io::Result<Arc<dyn BlockFile>> {
        let mut namespace = self.namespace.lock();
        Self::check_dir(&namespace, path)?;
        if namespace.files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{path} exists"),
            ));
        }
        let file = Arc::new(MemFile {
            sync_delay: self.sync_delay,
            ..MemFile::default()
        });
        namespace.files.insert(path.to_string(), file.clone());
        Ok(file)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut namespace = self.namespace.lock();
        Self::check_dir(&namespace, to)?;
        if let Some(file) = namespace.files.remove(from) {
            namespace.files.insert(to.to_string(), file);
            return Ok(());
        }
        if !namespace.dirs.remove(from) {
            return Err(not_found(from));
        }
        // A directory moves with everything under it.
        let prefix = format!("{from}/");
        let moved = |path: &str| format!("{to}/{}", &path[prefix.len()..]);
        let files: Vec<String> = namespace
            .files
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        for path in files {
            let file = namespace.files.remove(&path).expect("listed just now");
            namespace.files.insert(moved(&path), file);
        }
        let dirs: Vec<String> = namespace
            .dirs
            .iter()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        for path in dirs {
            namespace.dirs.remove(&path);
            namespace.dirs.insert(moved(&path));
        }
        namespace.dirs.insert(to.to_string());
        Ok(())
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.namespace
            .lock()
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let namespace = self.namespace.lock();
        if !namespace.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let children = namespace.files.keys().chain(namespace.dirs.iter());
        let mut names: Vec<String> = children
            .filter(|path| !path.is_empty() && parent(path) == dir)
            .map(|path| path.rsplit('/').next().unwrap_or(path).to_string())
            .collect();
        names.sort();
        Ok(names)
    }

    fn create_dir(&self, dir: &str) -> io::Result<()> {
        let mut namespace = self.namespace.lock();
        let mut level = dir;
        while !level.is_empty() {
            namespace.dirs.insert(level.to_string());
            level = parent(level);
        }
        Ok(())
    }

    fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        let mut namespace = self.namespace.lock();
        if !namespace.dirs.remove(dir) {
            return Err(not_found(dir));
        }
        let prefix = format!("{dir}/");
        namespace.files.retain(|path, _| !path.starts_with(&prefix));
        namespace.dirs.retain(|path| !path.starts_with(&prefix));
        Ok(())
    }

    fn exists(&self, path: &str) -> io::Result<bool> {
        let namespace = self.namespace.lock();
        Ok(namespace.files.contains_key(path) || namespace.dirs.contains(path))
    }

    fn write_atomic(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        let mut namespace = self.namespace.lock();
        Self::check_dir(&namespace, path)?;
        let contents = Contents {
            current: bytes.to_vec(),
            durable: bytes.to_vec(),
        };
        let file = MemFile {
            contents: Mutex::new(contents),
            sync_delay: self.sync_delay,
        };
        namespace.files.insert(path.to_string(), Arc::new(file));
        Ok(())
    }

    fn read_all(&self, path: &str) -> io::Result<Vec<u8>> {
        let namespace = self.namespace.lock();
        let file = namespace.files.get(path).ok_or_else(|| not_found(path))?;
        let contents = file.contents.lock().current.clone();
        Ok(contents)
    }

    fn space(&self) -> io::Result<Space> {
        let used: u64 = self
            .namespace
            .lock()
            .files
            .values()
            .map(|f| f.contents.lock().current.len() as u64)
            .sum();
        Ok(Space {
            total_bytes: self.capacity_bytes,
            free_bytes: self.capacity_bytes.saturating_sub(used),
        })
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}
