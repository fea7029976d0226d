//! What an NBD server exports: every volume of the cluster, by its name, including volumes
//! created after the server started. A volume is opened on first use and shared by every
//! connection to it (so several connections of one client, multi-conn, see one another's
//! writes at once), with one connection pool for all of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use crate::conn::Pool;
use crate::managers::Managers;
use crate::proto::PeerKind;
use crate::volume::{ClientError, Volume, VolumeOptions};

/// One exported volume.
pub struct Export {
    pub name: String,
    pub volume: Arc<Volume>,
    /// Read-modify-write of partial blocks, one at a time per volume, so that two of them on
    /// the same block, from any connections, cannot lose each other's bytes.
    pub unaligned: tokio::sync::Mutex<()>,
}

/// Why an export cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("there is no volume {0:?} (`vbs volume list` names the volumes; each is an export)")]
    Unknown(String),
    #[error("no export name given, and this server has no default export")]
    NoDefault,
    #[error("the managers could not tell: {0}")]
    Unavailable(ClientError),
}

pub struct Exports {
    managers: Arc<Managers>,
    options: VolumeOptions,
    /// The export a client gets when it names none.
    default: Option<String>,
    open: Mutex<HashMap<String, Arc<Export>>>,
}

impl Exports {
    /// Every volume of the cluster `managers` lead, opened with `options` (one pool is shared by
    /// all of them); `default` is the volume served to a client that names no export.
    pub fn new(
        managers: Arc<Managers>,
        mut options: VolumeOptions,
        default: Option<String>,
    ) -> Exports {
        if options.pool.is_none() {
            options.pool = Some(Arc::new(
                Pool::new(PeerKind::Client, &options.client_name, options.io_timeout)
                    .with_security(managers.security().clone()),
            ));
        }
        Exports {
            managers,
            options,
            default,
            open: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_export(&self) -> Option<&str> {
        self.default.as_deref()
    }

    /// The volume an export name stands for: itself, or the default for an empty name.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Result<&'a str, ExportError> {
        if !name.is_empty() {
            return Ok(name);
        }
        self.default.as_deref().ok_or(ExportError::NoDefault)
    }

    /// The names of every volume, in order.
    pub async fn names(&self) -> Result<Vec<String>, ExportError> {
        let list = self
            .managers
            .volumes()
            .await
            .map_err(|e| ExportError::Unavailable(ClientError::Managers(e)))?;
        let mut names: Vec<String> = list.into_iter().map(|v| v.name).collect();
        names.sort();
        Ok(names)
    }

    /// The export `name` names, with its volume's map fresh from the managers, so that a new
    /// connection sees the volume's size now (it may have grown). If the managers cannot be
    /// asked, a volume already open is served as last known.
    pub async fn open(&self, name: &str) -> Result<Arc<Export>, ExportError> {
        let name = self.resolve(name)?;
        let cached = self.lock().get(name).cloned();
        if let Some(export) = cached {
            match export.volume.refresh_map().await {
                Ok(()) => return Ok(export),
                Err(ClientError::VolumeDeleted { .. }) => {
                    // Perhaps created again under the same name: open that one.
                    let mut open = self.lock();
                    if open.get(name).is_some_and(|e| Arc::ptr_eq(e, &export)) {
                        open.remove(name);
                    }
                }
                Err(error) => {
                    warn!(export = name, %error, "could not refresh the volume map; serving it as last known");
                    return Ok(export);
                }
            }
        }
        let volume = Volume::open(self.managers.clone(), name, self.options.clone())
            .await
            .map_err(|error| match error {
                ClientError::VolumeNotFound { name } => ExportError::Unknown(name),
                other => ExportError::Unavailable(other),
            })?;
        let export = Arc::new(Export {
            name: name.to_string(),
            volume: Arc::new(volume),
            unaligned: tokio::sync::Mutex::new(()),
        });
        let mut open = self.lock();
        // Another connection may have opened it meanwhile: every connection shares one.
        let export = open.entry(name.to_string()).or_insert(export).clone();
        info!(
            export = name,
            size_bytes = export.volume.size_bytes(),
            "exporting a volume"
        );
        Ok(export)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Export>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}
