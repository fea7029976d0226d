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
}

pub async fn run(managers: Arc<Managers>, args: NbdArgs) -> anyhow::Result<()> {
    let exports = Arc::new(Exports::new(
        managers,
        VolumeOptions::default(),
        args.name.clone(),
    ));
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
