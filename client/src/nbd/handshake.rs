//! The option haggling of the fixed newstyle handshake: listing exports, structured replies,
//! metadata contexts (`base:allocation`), and choosing the export with its size and block
//! sizes. Every option gets an answer (an error reply that says why, where one applies); only a
//! client that breaks the protocol's framing is hung up on.

use std::io;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::exports::{Export, ExportError, Exports};
use super::wire;
use super::{MAX_PAYLOAD_BYTES, MIN_BLOCK_BYTES, PREFERRED_BLOCK_BYTES};

/// The most options one handshake may send before the server hangs up.
const MAX_OPTIONS: u32 = 64 << 10;
/// The id the one metadata context gets when a client selects it.
pub const ALLOCATION_CONTEXT_ID: u32 = 1;

/// What the handshake agreed on, for the transmission phase.
pub struct Session {
    pub export: Arc<Export>,
    /// The export's size as the client was told it.
    pub size_bytes: u64,
    pub structured: bool,
    /// The id of `base:allocation`, when the client selected it for this export.
    pub allocation_context: Option<u32>,
}

/// The transmission flags of an export.
pub fn transmission_flags(structured: bool) -> u16 {
    let flags = wire::FLAG_HAS_FLAGS
        | wire::FLAG_SEND_FLUSH
        | wire::FLAG_SEND_FUA
        | wire::FLAG_SEND_TRIM
        | wire::FLAG_SEND_WRITE_ZEROES
        | wire::FLAG_SEND_FAST_ZERO
        // Every acknowledged write is durable on every current copy and read by every
        // connection from the slice's primary: connections see one another's writes.
        | wire::FLAG_CAN_MULTI_CONN;
    // A read is always answered in one chunk.
    if structured {
        flags | wire::FLAG_SEND_DF
    } else {
        flags
    }
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The per-connection state of the haggling.
#[derive(Default)]
struct Haggle {
    structured: bool,
    /// The export the last `NBD_OPT_SET_META_CONTEXT` named, and whether it selected
    /// `base:allocation`.
    meta: Option<(String, bool)>,
}

/// Runs the option haggling on `stream`. `None`: the client ended it (`NBD_OPT_ABORT`).
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    exports: &Exports,
    stream: &mut S,
) -> io::Result<Option<Session>> {
    let mut hello = BytesMut::new();
    hello.put_u64(wire::NBDMAGIC);
    hello.put_u64(wire::IHAVEOPT);
    hello.put_u16(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES);
    stream.write_all(&hello).await?;
    let client_flags = stream.read_u32().await?;
    if client_flags & wire::FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(invalid(
            "the client does not speak the fixed newstyle handshake".into(),
        ));
    }
    let no_zeroes = client_flags & wire::FLAG_C_NO_ZEROES != 0;
    let mut haggle = Haggle::default();
    for _ in 0..MAX_OPTIONS {
        if stream.read_u64().await? != wire::IHAVEOPT {
            return Err(invalid("bad option magic".into()));
        }
        let option = stream.read_u32().await?;
        let length = stream.read_u32().await?;
        if length > wire::MAX_OPTION_BYTES {
            tokio::io::copy(
                &mut (&mut *stream).take(u64::from(length)),
                &mut tokio::io::sink(),
            )
            .await?;
            let message = format!(
                "an option of {length} bytes; at most {} are taken",
                wire::MAX_OPTION_BYTES
            );
            reply_error(stream, option, wire::REP_ERR_TOO_BIG, &message).await?;
            continue;
        }
        let mut payload = vec![0u8; length as usize];
        stream.read_exact(&mut payload).await?;
        match option {
            wire::OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(&payload).into_owned();
                // The protocol has no error reply for this option: the server hangs up.
                let export = exports
                    .open(&name)
                    .await
                    .map_err(|e| invalid(format!("export {name:?}: {e}")))?;
                let session = haggle.session(exports, export);
                let mut reply = BytesMut::new();
                reply.put_u64(session.size_bytes);
                reply.put_u16(transmission_flags(session.structured));
                if !no_zeroes {
                    reply.put_slice(&[0u8; 124]);
                }
                stream.write_all(&reply).await?;
                return Ok(Some(session));
            }
            wire::OPT_ABORT => {
                reply(stream, option, wire::REP_ACK, &[]).await?;
                return Ok(None);
            }
            wire::OPT_LIST if !payload.is_empty() => {
                let message = "NBD_OPT_LIST carries no data";
                reply_error(stream, option, wire::REP_ERR_INVALID, message).await?;
            }
            wire::OPT_LIST => match exports.names().await {
                Ok(names) => {
                    for name in names {
                        reply(stream, option, wire::REP_SERVER, &wire::server_entry(&name)).await?;
                    }
                    reply(stream, option, wire::REP_ACK, &[]).await?;
                }
                Err(e) => {
                    reply_error(stream, option, wire::REP_ERR_PLATFORM, &e.to_string()).await?
                }
            },
            wire::OPT_STRUCTURED_REPLY if !payload.is_empty() => {
                let message = "NBD_OPT_STRUCTURED_REPLY carries no data";
                reply_error(stream, option, wire::REP_ERR_INVALID, message).await?;
            }
            wire::OPT_STRUCTURED_REPLY => {
                haggle.structured = true;
                reply(stream, option, wire::REP_ACK, &[]).await?;
            }
            wire::OPT_LIST_META_CONTEXT | wire::OPT_SET_META_CONTEXT => {
                haggle
                    .meta_context(exports, stream, option, &payload)
                    .await?;
            }
            wire::OPT_INFO | wire::OPT_GO => {
                let Some((name, requested)) = wire::parse_go(&payload) else {
                    let message = "a malformed NBD_OPT_INFO or NBD_OPT_GO";
                    reply_error(stream, option, wire::REP_ERR_INVALID, message).await?;
                    continue;
                };
                let export = match exports.open(&name).await {
                    Ok(export) => export,
                    Err(e) => {
                        let code = export_error_reply(&e);
                        reply_error(stream, option, code, &e.to_string()).await?;
                        continue;
                    }
                };
                let session = haggle.session(exports, export);
                let info =
                    wire::info_export(session.size_bytes, transmission_flags(session.structured));
                reply(stream, option, wire::REP_INFO, &info).await?;
                if name != session.export.name || requested.contains(&wire::INFO_NAME) {
                    let info = wire::info_name(&session.export.name);
                    reply(stream, option, wire::REP_INFO, &info).await?;
                }
                let sizes = wire::info_block_size(
                    MIN_BLOCK_BYTES,
                    PREFERRED_BLOCK_BYTES,
                    MAX_PAYLOAD_BYTES,
                );
                reply(stream, option, wire::REP_INFO, &sizes).await?;
                reply(stream, option, wire::REP_ACK, &[]).await?;
                if option == wire::OPT_GO {
                    return Ok(Some(session));
                }
            }
            wire::OPT_STARTTLS => {
                let message = "this server does not speak TLS; it listens on loopback by default";
                reply_error(stream, option, wire::REP_ERR_UNSUP, message).await?;
            }
            _ => {
                let message = format!("option {option} is not supported");
                reply_error(stream, option, wire::REP_ERR_UNSUP, &message).await?;
            }
        }
    }
    Err(invalid(format!("more than {MAX_OPTIONS} options")))
}

impl Haggle {
    fn session(&self, exports: &Exports, export: Arc<Export>) -> Session {
        let selected = self.meta.as_ref().is_some_and(|(name, allocation)| {
            *allocation && exports.resolve(name).is_ok_and(|n| n == export.name)
        });
        Session {
            size_bytes: export.volume.size_bytes(),
            export,
            structured: self.structured,
            allocation_context: (self.structured && selected).then_some(ALLOCATION_CONTEXT_ID),
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`: `base:allocation` is the one
    /// context; queries of other namespaces are ignored, as the protocol says.
    async fn meta_context<S: AsyncWrite + Unpin>(
        &mut self,
        exports: &Exports,
        stream: &mut S,
        option: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let set = option == wire::OPT_SET_META_CONTEXT;
        if set {
            // Whatever happens next, the earlier selection is replaced.
            self.meta = None;
        }
        if !self.structured {
            let message = "negotiate structured replies (NBD_OPT_STRUCTURED_REPLY) first";
            return reply_error(stream, option, wire::REP_ERR_INVALID, message).await;
        }
        let Some((name, queries)) = wire::parse_meta_context(payload) else {
            let message = format!(
                "a malformed metadata context option (at most {} queries)",
                wire::MAX_META_QUERIES
            );
            return reply_error(stream, option, wire::REP_ERR_INVALID, &message).await;
        };
        if let Err(e) = exports.open(&name).await {
            return reply_error(stream, option, export_error_reply(&e), &e.to_string()).await;
        }
        let allocation = if set {
            queries.iter().any(|q| q == wire::CONTEXT_BASE_ALLOCATION)
        } else {
            queries.is_empty()
                || queries
                    .iter()
                    .any(|q| q == "base:" || q == wire::CONTEXT_BASE_ALLOCATION)
        };
        if allocation {
            let id = if set { ALLOCATION_CONTEXT_ID } else { 0 };
            let context = wire::meta_context(id, wire::CONTEXT_BASE_ALLOCATION);
            reply(stream, option, wire::REP_META_CONTEXT, &context).await?;
        }
        if set {
            self.meta = Some((name, allocation));
        }
        reply(stream, option, wire::REP_ACK, &[]).await
    }
}

fn export_error_reply(error: &ExportError) -> u32 {
    match error {
        ExportError::Unknown(_) | ExportError::NoDefault => wire::REP_ERR_UNKNOWN,
        ExportError::Unavailable(_) => wire::REP_ERR_PLATFORM,
    }
}

async fn reply<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    kind: u32,
    data: &[u8],
) -> io::Result<()> {
    stream
        .write_all(&wire::option_reply(option, kind, data))
        .await
}

async fn reply_error<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    kind: u32,
    message: &str,
) -> io::Result<()> {
    stream
        .write_all(&wire::option_error(option, kind, message))
        .await
}
