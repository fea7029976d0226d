//! `vbs nbd [NAME] --listen ADDR`: serve every volume over NBD until interrupted.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use client::managers::Managers;
use client::nbd::Exports;
use client::volume::VolumeOptions;

#[derive(Debug, Args)]
pub struct NbdArgs {
    /// The default export: the volume a client gets when it names none. Every volume is served
    /// by its name either way.
    #[arg(value_parser = super::volume_name)]
    pub name: Option<String>,
    /// Address to listen on, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// How long one request to a storage node may take before its primary is reported
    /// unresponsive (and the slice fails over once its lease runs out).
    #[arg(long, default_value = "5s", value_parser = client::size::parse_duration)]
    pub io_timeout: std::time::Duration,
    /// How long an NBD request keeps retrying before it fails with EIO.
    #[arg(long, default_value = "30s", value_parser = client::size::parse_duration)]
    pub retry_deadline: std::time::Duration,
}

pub async fn run(managers: Arc<Managers>, args: NbdArgs) -> anyhow::Result<()> {
    let options = VolumeOptions {
        io_timeout: args.io_timeout,
        retry_deadline: args.retry_deadline,
        ..VolumeOptions::default()
    };
    let exports = Arc::new(Exports::new(managers, options, args.name.clone()));
    if let Some(name) = &args.name {
        // A default export that does not exist is a mistake worth saying now.
        exports
            .open(name)
            .await
            .with_context(|| format!("exporting volume {name}"))?;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    match &args.name {
        Some(name) => eprintln!(
            "vbs: serving every volume over NBD at nbd://{addr}/NAME (default export: \
             nbd://{addr}/{name})"
        ),
        None => eprintln!("vbs: serving every volume over NBD at nbd://{addr}/NAME"),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    client::nbd::serve(listener, exports, shutdown).await?;
    Ok(())
}
