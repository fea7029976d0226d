//! A `vbs nbd` gateway process for a cluster's volume, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::binaries::binary;
use crate::cluster::{free_port, Cluster};
use crate::wait::wait_until;

pub struct NbdGateway {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `nbd://127.0.0.1:PORT/VOLUME`
    pub url: String,
}

impl NbdGateway {
    /// Starts `vbs nbd VOLUME` against `cluster`, logging to the cluster's directory, and waits
    /// until it listens.
    pub async fn start(cluster: &Cluster, volume: &str) -> anyhow::Result<NbdGateway> {
        NbdGateway::start_with(cluster, volume, &[]).await
    }

    /// [`NbdGateway::start`] with extra `vbs nbd` arguments (`--io-timeout 1s`, say).
    pub async fn start_with(
        cluster: &Cluster,
        volume: &str,
        extra: &[&str],
    ) -> anyhow::Result<NbdGateway> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(cluster.dir.path().join(format!("nbd-{volume}.log")))?;
        let child = Command::new(binary("vbs")?)
            .args(cluster.credentials().client_args())
            .args([
                "--managers",
                &cluster.managers_arg(),
                "nbd",
                volume,
                "--listen",
                &addr,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting vbs nbd")?;
        let gateway = NbdGateway {
            child,
            url: format!("nbd://{addr}/{volume}"),
            addr,
        };
        wait_until(
            "the NBD gateway to listen",
            Duration::from_secs(30),
            || async {
                Ok::<_, anyhow::Error>(std::net::TcpStream::connect(&gateway.addr).ok().map(|_| ()))
            },
        )
        .await?;
        Ok(gateway)
    }
}

impl Drop for NbdGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 4 KiB block whose every 8 bytes say `tag`, so that a block read back tells which write it
/// holds.
pub fn tagged_block(tag: u64) -> bytes::Bytes {
    let mut data = vec![0u8; 4096];
    for chunk in data.chunks_mut(8) {
        chunk.copy_from_slice(&tag.to_le_bytes());
    }
    bytes::Bytes::from(data)
}
