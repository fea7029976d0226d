//! A client that goes through the NBD gateway with an NBD client library nobody here wrote:
//! libnbd, from Debian's `python3-libnbd`, in a small Python process (`nbd_client.py`) driven
//! one request at a time over its stdin and stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

/// Debian's Python, which `python3-libnbd` installs its module for.
const PYTHON: &str = "/usr/bin/python3";
const SCRIPT: &str = include_str!("nbd_client.py");

/// The driver script written to `dir`, with libnbd's Python module installed when missing.
pub fn prepare(dir: &Path) -> anyhow::Result<PathBuf> {
    crate::tools::ensure(PYTHON, "python3")?;
    let has_module = std::process::Command::new(PYTHON)
        .args(["-c", "import nbd"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_module {
        crate::tools::install("python3-libnbd")?;
    }
    let script = dir.join("nbd_client.py");
    std::fs::write(&script, SCRIPT).context("writing the NBD client script")?;
    Ok(script)
}

struct Driver {
    stdin: ChildStdin,
    stdout: ChildStdout,
    // Killed when the client is dropped.
    _child: Child,
}

/// One NBD connection.
pub struct NbdClient {
    driver: Mutex<Driver>,
    size_bytes: u64,
}

impl NbdClient {
    /// Connects to `uri` through the driver `script`.
    pub async fn connect(script: &Path, uri: &str) -> anyhow::Result<NbdClient> {
        let mut child = Command::new(PYTHON)
            .arg(script)
            .arg(uri)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the libnbd client")?;
        let mut driver = Driver {
            stdin: child.stdin.take().context("its stdin")?,
            stdout: child.stdout.take().context("its stdout")?,
            _child: child,
        };
        let size = match driver.answer().await? {
            Ok(size) if size.len() == 8 => u64::from_be_bytes(size[..].try_into()?),
            Ok(other) => bail!("the libnbd client said its size in {} bytes", other.len()),
            Err(error) => bail!("the libnbd client could not connect to {uri}: {error}"),
        };
        Ok(NbdClient {
            driver: Mutex::new(driver),
            size_bytes: size,
        })
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes, String> {
        self.request(b'R', offset, len, &[]).await
    }

    pub async fn write(&self, offset: u64, data: &[u8]) -> Result<(), String> {
        self.request(b'W', offset, data.len() as u64, data)
            .await
            .map(drop)
    }

    async fn request(&self, op: u8, offset: u64, len: u64, data: &[u8]) -> Result<Bytes, String> {
        let mut driver = self.driver.lock().await;
        let mut head = Vec::with_capacity(13 + data.len());
        head.push(op);
        head.extend(offset.to_be_bytes());
        head.extend(
            u32::try_from(len)
                .map_err(|_| "request too large")?
                .to_be_bytes(),
        );
        head.extend(data);
        let sent = driver.stdin.write_all(&head).await;
        if let Err(e) = sent {
            return Err(format!("the libnbd client is gone: {e}"));
        }
        match driver.answer().await {
            Ok(answer) => answer,
            Err(e) => Err(format!("the libnbd client is gone: {e:#}")),
        }
    }
}

impl Driver {
    /// One answer: its data, or the error the client reported.
    async fn answer(&mut self) -> anyhow::Result<Result<Bytes, String>> {
        let status = self.stdout.read_u8().await?;
        let len = self.stdout.read_u32().await? as usize;
        let mut payload = vec![0u8; len];
        self.stdout.read_exact(&mut payload).await?;
        Ok(match status {
            0 => Ok(Bytes::from(payload)),
            _ => Err(String::from_utf8_lossy(&payload).into_owned()),
        })
    }
}
