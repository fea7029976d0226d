//! `vbs nbd NAME --listen ADDR`: serve a volume over NBD until interrupted.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use client::managers::Managers;
use client::volume::{Volume, VolumeOptions};

#[derive(Debug, Args)]
pub struct NbdArgs {
    /// The volume to export (also the NBD export name).
    #[arg(value_parser = super::volume_name)]
    pub name: String,
    /// Address to listen on, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
}

pub async fn run(managers: Arc<Managers>, args: NbdArgs) -> anyhow::Result<()> {
    let volume = Volume::open(managers, &args.name, VolumeOptions::default()).await?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "vbs: serving volume {} over NBD at nbd://{addr}/{}",
        args.name, args.name
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    client::nbd::serve(listener, Arc::new(volume), args.name, shutdown).await?;
    Ok(())
}
